"""Encoders and decoders of the ScoreVAE family (score_vae_paper.txt, appendix B), NHWC.

Ported from the paper code (GBATZOLIS/conditional_score_diffusion, branch ``scoreVAE``,
commit b188acd3: ``models/encoder.py``, ``models/decoder.py``, ``models/half_U.py``):

* ``SimpleEncoder`` (``time_dependent_simple_encoder``; ``simple_encoder`` without t):
  3x3 convolutions with GELU, stride 2 every other layer, flattened, the raw time
  appended, one linear layer to ``2 * latent_dim`` (mean, log-variance). For 32x32x3 and
  ``c_hid=64``, latent 384: 1,982,144 parameters with t, 1,981,376 without (pinned).
  Images below 64 pixels use the 32x32 layout (three stride-2 layers), 64 and above the
  64x64 one (four).
* ``DDPMEncoder`` (``time_dependent_DDPM_encoder``): the down path and middle block of
  the DDPM U-Net without skip connections, flattened, one linear layer. The time enters
  the sinusoidal embedding raw (the paper code calls ``encoder(x, t)`` with t in [0, 1];
  the prior gets 999 t). For CelebA-64 (nf 128, ch_mult 1,1,2,2,3, 2 blocks, attention
  at 16, latent 512): 26,722,944 parameters (pinned).
* ``MirrorDecoder`` (``simple_decoder``, the beta-VAE baseline of Table 1): a linear
  layer to a 4x4 map (image side / 8 below 64 pixels) and transposed convolutions that
  mirror ``SimpleEncoder`` (CIFAR-10: 1,196,099 parameters, pinned).
* ``DDPMDecoder`` (``half_U_decoder_no_conv``, the CelebA baseline of Table 2): a linear
  layer to the lowest resolution, then the up path of the DDPM U-Net without skips.

Encoders return ``(mean, log_variance)``, each ``[B, latent_dim]``; decoders return
logits (the method applies the sigmoid, as the reference's ``VAE.decode``). Weight
layouts follow flax (HWIO, NHWC flatten order), not PyTorch's.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsgm_jax.models import layers

Array = jax.Array
_PAD1 = ((1, 1), (1, 1))  # PyTorch padding=1 (flax "SAME" pads (0, 1) at stride 2)
# PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) doubles the side:
# the stride-dilated input padded by (k - 1 - p, k - 1 - p + output_padding) = (1, 2).
_TPAD = ((1, 2), (1, 2))


def _gelu(x: Array) -> Array:
  return nn.gelu(x, approximate=False)  # torch.nn.GELU() is the exact (erf) form


def _simple_layout(image_size: int, c: int) -> list[tuple[int, int]]:
  """(width, stride) of each convolution of the paper code's simple encoder."""
  if image_size >= 64:  # encoder.py, image_size == 64
    return [(c, 2), (c, 1), (2 * c, 2), (2 * c, 1), (4 * c, 2), (4 * c, 1), (4 * c, 2)]
  return [(c, 2), (c, 1), (2 * c, 2), (2 * c, 1), (2 * c, 2)]  # image_size == 32


class SimpleEncoder(nn.Module):
  """The paper code's (time-dependent) simple convolutional encoder.

  Attributes:
    c_hid: base channel count (``encoder_base_channel_size``; 64 in the paper).
    latent_dim: dimension of z.
    time_conditional: append the raw t to the flattened features.
    dtype: computation dtype.
  """

  c_hid: int = 64
  latent_dim: int = 384
  time_conditional: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array | None = None, train: bool = False
               ) -> tuple[Array, Array]:
    """Args: x ``[B, H, W, C]`` (data as given: the paper feeds [0, 1] images), t ``[B]``.
    Returns: (mean, log-variance), each ``[B, latent_dim]`` float32."""
    del train
    h = x.astype(self.dtype)
    for i, (width, stride) in enumerate(_simple_layout(x.shape[1], self.c_hid)):
      h = _gelu(nn.Conv(width, (3, 3), strides=(stride, stride), padding=_PAD1,
                        dtype=self.dtype, param_dtype=jnp.float32, name=f"conv_{i}")(h))
    h = h.reshape((h.shape[0], -1))
    if self.time_conditional:
      t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
      h = jnp.concatenate([h, t[:, None].astype(h.dtype)], axis=-1)
    out = nn.Dense(2 * self.latent_dim, dtype=self.dtype, param_dtype=jnp.float32,
                   name="linear")(h).astype(jnp.float32)
    return out[:, :self.latent_dim], out[:, self.latent_dim:]


class DDPMEncoder(nn.Module):
  """The down path + middle block of the DDPM U-Net, flattened to (mean, log-variance).

  Attributes:
    nf: base channels. ch_mult, num_res_blocks, attn_resolutions, dropout: as ``UNet``.
    latent_dim: dimension of z.
    time_conditional: sinusoidal embedding of the raw t -> Dense(4 nf) -> SiLU -> Dense.
    center_input: the network sees 2x - 1 (data in [0, 1], the reference's
      ``data.centered=False``).
    max_groups: GroupNorm group cap.
    dtype: computation dtype.
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2, 3)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  latent_dim: int = 512
  time_conditional: bool = True
  center_input: bool = True
  max_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array | None = None, train: bool = False
               ) -> tuple[Array, Array]:
    """Args: x ``[B, H, W, C]``, t ``[B]``, train (dropout). Returns (mean, log-var)."""
    dtype = self.dtype
    temb = None
    if self.time_conditional:
      t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
      temb = layers.sinusoidal_embedding(t, self.nf)  # raw t, as the paper code
      temb = layers.dense(4 * self.nf, jnp.float32, name="temb_0")(temb)
      temb = layers.dense(4 * self.nf, jnp.float32, name="temb_1")(nn.silu(temb))
      temb = temb.astype(dtype)
    block = lambda out_ch=None: layers.ResnetBlockDDPM(  # noqa: E731
        out_ch=out_ch, dropout=self.dropout, init_scale=0.0, max_groups=self.max_groups,
        dtype=dtype)
    attn = lambda: layers.AttnBlock(init_scale=0.0, max_groups=self.max_groups,  # noqa: E731
                                    dtype=dtype)
    h = 2.0 * x - 1.0 if self.center_input else x
    h = layers.conv3x3(self.nf, dtype, name="conv_in")(h.astype(dtype))
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = block(self.nf * mult)(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
      if level != len(self.ch_mult) - 1:
        h = layers.Downsample(with_conv=True, dtype=dtype)(h)
    h = block()(h, temb, train)
    h = attn()(h)
    h = block()(h, temb, train)
    h = h.reshape((h.shape[0], -1))
    out = layers.dense(2 * self.latent_dim, dtype, name="linear")(h).astype(jnp.float32)
    return out[:, :self.latent_dim], out[:, self.latent_dim:]


class MirrorDecoder(nn.Module):
  """The paper code's ``MirrorDecoder``: linear + GELU, then transposed convolutions.

  Attributes:
    c_hid: base channels (as the encoder's).
    out_channels: image channels.
    dtype: computation dtype.
  """

  c_hid: int = 64
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array, image_size: int) -> Array:
    """Args: z ``[B, latent]``, image_size (side). Returns logits ``[B, S, S, C]``."""
    c, dtype = self.c_hid, self.dtype
    if image_size >= 64:
      ch0, steps = 4 * c, [("t", 4 * c), ("c", 4 * c), ("t", 2 * c), ("c", 2 * c),
                           ("t", c), ("c", c)]
      side = image_size // 16
    else:
      ch0, steps = 2 * c, [("t", 2 * c), ("c", 2 * c), ("t", c), ("c", c)]
      side = image_size // 8
    if side < 1:
      raise ValueError(f"MirrorDecoder: image side {image_size} is too small")
    dense = lambda n, name: nn.Dense(n, dtype=dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
    h = _gelu(dense(side * side * ch0, "linear")(z.astype(dtype)))
    h = h.reshape((z.shape[0], side, side, ch0))
    for i, (kind, width) in enumerate(steps + [("t", self.out_channels)]):
      if kind == "t":
        h = nn.ConvTranspose(width, (3, 3), strides=(2, 2), padding=_TPAD, dtype=dtype,
                             param_dtype=jnp.float32, name=f"deconv_{i}")(h)
      else:
        h = nn.Conv(width, (3, 3), padding=_PAD1, dtype=dtype, param_dtype=jnp.float32,
                    name=f"conv_{i}")(h)
      if i < len(steps):
        h = _gelu(h)
    return h.astype(jnp.float32)


class DDPMDecoder(nn.Module):
  """The up path of the DDPM U-Net without skips (``half_U_decoder_no_conv``).

  Attributes: as ``DDPMEncoder`` (no time input), plus ``out_channels``.
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2, 3)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  out_channels: int = 3
  max_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array, image_size: int, train: bool = False) -> Array:
    """Args: z ``[B, latent]``, image_size, train. Returns logits ``[B, S, S, C]``."""
    dtype = self.dtype
    side = image_size // 2 ** (len(self.ch_mult) - 1)
    in_ch = self.nf * self.ch_mult[-1]
    h = nn.Dense(side * side * in_ch, dtype=dtype, param_dtype=jnp.float32,
                 name="linear")(z.astype(dtype)).reshape((z.shape[0], side, side, in_ch))
    for level in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = layers.ResnetBlockDDPM(out_ch=self.nf * self.ch_mult[level], dropout=self.dropout,
                                   max_groups=self.max_groups, dtype=dtype)(h, None, train)
      if h.shape[1] in self.attn_resolutions:
        h = layers.AttnBlock(init_scale=0.0, max_groups=self.max_groups, dtype=dtype)(h)
      if level != 0:
        h = layers.Upsample(with_conv=True, dtype=dtype)(h)
    h = nn.silu(layers.group_norm(h.shape[-1], dtype, "norm_out", self.max_groups)(h))
    h = layers.conv3x3(self.out_channels, dtype, init_scale=0.0, name="conv_out")(h)
    return h.astype(jnp.float32)
