"""The first stage of the latent VAE: a convolutional KL autoencoder (latent VAE paper,
§3.1; the paper uses the pretrained LDM autoencoders of Rombach et al., 2022).

An encoder maps an image ``[B, H, W, in_channels]`` to the moments of a diagonal
Gaussian posterior over latents ``[B, H/f, W/f, embed_dim]`` (f = 2^(len(ch_mult) - 1));
a decoder maps latents back to images. The layer layout and the parameter names follow
the LDM ``AutoencoderKL`` (``ldm/models/autoencoder.py``) with its ``Encoder`` and
``Decoder`` (``ldm/modules/diffusionmodules/model.py``), so that the published
checkpoints convert name by name (``lsgm_jax.models.autoencoder_convert``): torch's
``encoder.down.1.block.0.norm1.weight`` is ``encoder/down_1/block_0/norm1/scale`` here.

Every GroupNorm uses eps 1e-6 (LDM's ``Normalize``); downsampling pads only the bottom
and right by one pixel before a stride-2 3x3 convolution (LDM's ``Downsample``), so a
converted checkpoint computes the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

GROUPNORM_EPS = 1e-6  # LDM Normalize()
LOGVAR_RANGE = (-30.0, 20.0)  # LDM DiagonalGaussianDistribution clamps the log-variance


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Architecture of an LDM-style KL autoencoder (LDM ``ddconfig`` + ``embed_dim``).

  Attributes:
    ch: base channels.
    ch_mult: channel multiplier per level; len(ch_mult) - 1 downsamplings.
    num_res_blocks: residual blocks per encoder level (decoder levels have one more).
    attn_resolutions: feature resolutions (relative to ``resolution``) with attention.
    resolution: the image size the attention placement refers to (LDM ``resolution``);
      inputs of other sizes still work, attention stays at the same levels.
    in_channels: image channels in.
    out_ch: image channels out.
    z_channels: channels of the encoder/decoder bottleneck.
    embed_dim: latent channels C after ``quant_conv``.
    double_z: the encoder outputs mean and log-variance (always True for AutoencoderKL).
    dropout: dropout rate in residual blocks (0 in every LDM first stage).
    num_groups: GroupNorm groups (32 in LDM; small test models need fewer).
  """

  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = ()
  resolution: int = 256
  in_channels: int = 3
  out_ch: int = 3
  z_channels: int = 4
  embed_dim: int = 4
  double_z: bool = True
  dropout: float = 0.0
  num_groups: int = 32

  def __post_init__(self):
    if not self.double_z:
      raise ValueError("AutoencoderConfig.double_z must be True (a KL autoencoder)")
    for mult in self.ch_mult:
      if (self.ch * mult) % self.num_groups:
        raise ValueError(f"AutoencoderConfig: ch * ch_mult = {self.ch * mult} is not "
                         f"divisible by num_groups={self.num_groups}")

  @property
  def downsample_factor(self) -> int:
    """f: image size / latent size."""
    return 2 ** (len(self.ch_mult) - 1)

  def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(H/f, W/f, embed_dim)`` for an ``(H, W, C)`` image."""
    h, w = image_shape[0], image_shape[1]
    f = self.downsample_factor
    if h % f or w % f:
      raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's "
                       f"downsampling factor f={f}")
    return (h // f, w // f, self.embed_dim)


def _norm(num_groups: int, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=num_groups, epsilon=GROUPNORM_EPS, name=name)


def _conv(features: int, kernel: int, name: str, stride: int = 1,
          padding="SAME") -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv3x3 twice plus a (1x1 ``nin_shortcut`` if widths differ) skip."""

  out_channels: int
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = nn.swish(_norm(self.num_groups, "norm1")(x))
    h = _conv(self.out_channels, 3, "conv1")(h)
    h = nn.swish(_norm(self.num_groups, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0.0)(h)
    h = _conv(self.out_channels, 3, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, 1x1 convs q, k, v, proj_out."""

  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = _norm(self.num_groups, "norm")(x)
    q, k, v = (_conv(c, 1, name)(y).reshape(b, h * w, c) for name in ("q", "k", "v"))
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) * c ** -0.5, axis=-1)
    out = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, h, w, c)
    return x + _conv(c, 1, "proj_out")(out)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one pixel at the bottom and right (LDM)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _conv(x.shape[-1], 3, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, "conv")(x)


class Level(nn.Module):
  """One resolution: ``block_j`` (each followed by ``attn_j`` if ``attention``), then
  ``downsample`` / ``upsample`` unless it is the last level in that direction."""

  out_channels: int
  num_blocks: int
  attention: bool
  resample: str  # "down" | "up" | "none"
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for j in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.num_groups, self.dropout,
                      name=f"block_{j}")(x, train)
      if self.attention:
        x = AttnBlock(self.num_groups, name=f"attn_{j}")(x)
    if self.resample == "down":
      x = Downsample(name="downsample")(x)
    elif self.resample == "up":
      x = Upsample(name="upsample")(x)
    return x


class Mid(nn.Module):
  """block_1, attn_1, block_2 at the lowest resolution."""

  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    x = ResnetBlock(c, self.num_groups, self.dropout, name="block_1")(x, train)
    x = AttnBlock(self.num_groups, name="attn_1")(x)
    return ResnetBlock(c, self.num_groups, self.dropout, name="block_2")(x, train)


class Encoder(nn.Module):
  """Image -> 2 * z_channels moments (LDM Encoder with double_z)."""

  config: AutoencoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.config
    h = _conv(cfg.ch, 3, "conv_in")(x)
    last = len(cfg.ch_mult) - 1
    for i, mult in enumerate(cfg.ch_mult):
      h = Level(cfg.ch * mult, cfg.num_res_blocks,
                attention=(cfg.resolution >> i) in cfg.attn_resolutions,
                resample="down" if i != last else "none", num_groups=cfg.num_groups,
                dropout=cfg.dropout, name=f"down_{i}")(h, train)
    h = Mid(cfg.num_groups, cfg.dropout, name="mid")(h, train)
    h = nn.swish(_norm(cfg.num_groups, "norm_out")(h))
    return _conv(2 * cfg.z_channels, 3, "conv_out")(h)


class Decoder(nn.Module):
  """z_channels latents -> image (LDM Decoder). ``up_i`` is the level at resolution
  ``resolution / 2^i``; they run from the deepest (i = len(ch_mult) - 1) up to 0."""

  config: AutoencoderConfig

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False,
               features_only: bool = False) -> jax.Array:
    cfg = self.config
    last = len(cfg.ch_mult) - 1
    h = _conv(cfg.ch * cfg.ch_mult[last], 3, "conv_in")(z)
    h = Mid(cfg.num_groups, cfg.dropout, name="mid")(h, train)
    for i in reversed(range(len(cfg.ch_mult))):
      h = Level(cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1,
                attention=(cfg.resolution >> i) in cfg.attn_resolutions,
                resample="up" if i != 0 else "none", num_groups=cfg.num_groups,
                dropout=cfg.dropout, name=f"up_{i}")(h, train)
    h = nn.swish(_norm(cfg.num_groups, "norm_out")(h))
    conv_out = _conv(cfg.out_ch, 3, "conv_out")
    if features_only:  # the input of conv_out (the LDM adaptive GAN weight needs it)
      if self.is_initializing():
        conv_out(h)
      return h
    return conv_out(h)


class AutoencoderKL(nn.Module):
  """Encoder + ``quant_conv`` (moments) and ``post_quant_conv`` + Decoder (LDM).

  ``encode(x) -> (mean, logvar)`` of the posterior over ``[B, H/f, W/f, embed_dim]``;
  ``decode(z) -> x``; calling the module encodes, draws z (posterior mean when no
  ``sample_rng``) and decodes.
  """

  config: AutoencoderConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.quant_conv = _conv(2 * cfg.embed_dim, 1, "quant_conv")
    self.post_quant_conv = _conv(cfg.z_channels, 1, "post_quant_conv")

  def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Posterior moments (mean, log-variance clamped as in LDM), each ``[B, h, w, C]``."""
    moments = self.quant_conv(self.encoder(x, train))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array, train: bool = False,
             features_only: bool = False) -> jax.Array:
    """Images ``[B, H, W, out_ch]`` from latents (``features_only``: conv_out's input)."""
    return self.decoder(self.post_quant_conv(z), train, features_only)

  def __call__(self, x: jax.Array, sample_rng: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(reconstruction, mean, logvar); z ~ q(z|x) with ``sample_rng``, else the mean."""
    mean, logvar = self.encode(x, train)
    z = mean
    if sample_rng is not None:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(sample_rng, mean.shape, mean.dtype)
    return self.decode(z, train), mean, logvar


def count_ldm_params(cfg: AutoencoderConfig) -> int:
  """The trainable parameter count of LDM's AutoencoderKL, from its layer shapes alone.

  Written independently of the flax modules (layer by layer as ``ldm/modules/
  diffusionmodules/model.py`` builds them), so a test can compare the two.
  """
  conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731  (weight + bias)
  norm = lambda c: 2 * c  # noqa: E731  (GroupNorm weight + bias)

  def resblock(cin, cout):
    return (norm(cin) + conv(cin, cout, 3) + norm(cout) + conv(cout, cout, 3)
            + (conv(cin, cout, 1) if cin != cout else 0))

  def attn(c):
    return norm(c) + 4 * conv(c, c, 1)

  levels = len(cfg.ch_mult)
  # Encoder.
  total = conv(cfg.in_channels, cfg.ch, 3)
  block_in = cfg.ch
  for i, mult in enumerate(cfg.ch_mult):
    for _ in range(cfg.num_res_blocks):
      total += resblock(block_in, cfg.ch * mult)
      block_in = cfg.ch * mult
      if (cfg.resolution >> i) in cfg.attn_resolutions:
        total += attn(block_in)
    if i != levels - 1:
      total += conv(block_in, block_in, 3)
  total += 2 * resblock(block_in, block_in) + attn(block_in)
  total += norm(block_in) + conv(block_in, 2 * cfg.z_channels, 3)
  # quant_conv and post_quant_conv.
  total += conv(2 * cfg.z_channels, 2 * cfg.embed_dim, 1) + conv(cfg.embed_dim, cfg.z_channels, 1)
  # Decoder.
  block_in = cfg.ch * cfg.ch_mult[-1]
  total += conv(cfg.z_channels, block_in, 3)
  total += 2 * resblock(block_in, block_in) + attn(block_in)
  for i in reversed(range(levels)):
    for _ in range(cfg.num_res_blocks + 1):
      total += resblock(block_in, cfg.ch * cfg.ch_mult[i])
      block_in = cfg.ch * cfg.ch_mult[i]
      if (cfg.resolution >> i) in cfg.attn_resolutions:
        total += attn(block_in)
    if i != 0:
      total += conv(block_in, block_in, 3)
  total += norm(block_in) + conv(block_in, cfg.out_ch, 3)
  return total
