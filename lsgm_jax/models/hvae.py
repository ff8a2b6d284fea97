"""Deep hierarchical VAE of the latent VAE paper (appendix B) as flax.linen modules.

The model (``HVAE``) follows the authors' JAX code (ericl122333/latent-vae-jax,
``model.py`` / ``nn.py``), which is itself a VDVAE-style top-down VAE (Child, 2020):

* levels at ``level_resolutions(resolution, n)``: halve each time, anything below 4
  collapses to 1 (32,16,8,4,1 for Church / ImageNet; 64,32,16,8,4,1 for Bedroom f-4);
* encoder: 3x3 input conv, per level ``enc_layers`` residual blocks with
  ``num_attention`` attention layers spread evenly between them, then average-pool
  (stride 2, or 4 from 4x4 to 1x1) and a 1x1 conv where the width changes; the
  activations before pooling feed the posterior of that level;
* generator: a learned initial state (or, for the upsampler, a 1x1 projection of the
  low-resolution image) at the lowest resolution, per level ``num_groups`` stochastic
  layers with attention spread between them, then nearest upsampling (+1x1 conv where
  the width changes); a 1x1 output conv gives mean and log-variance per data channel;
* blocks are inverted bottlenecks: two 3x3 convs (1x1 at 1x1 resolution), then a 1x1
  FFN expanding by ``ffn_ratio`` and projecting back; ``ffn_ratio == 0`` gives the
  two-conv block;
* every stochastic layer: 1x1 projection of concat(state, encoder activations), a
  posterior block and a prior block whose last conv carries the spectral-norm penalty
  (no residual), a bias-free 1x1 projection of z, and a shared residual block;
* prior: standard normal (unconditional models) or hierarchical (class-conditional:
  ``num_classes + 1`` class embeddings, the last one the null label of classifier-free
  guidance, projected by a Dense layer and added at the input of every block);
* guided sampling (paper eq. 2, appendix C): ``guided_prior`` and ``HVAE.sample`` with
  ``guided=True``, which runs conditional and unconditional hidden states side by side
  and draws one z per layer from the guided prior.

Layers live in ``lsgm_jax.models.hvae_layers``, the Gaussian algebra, the guided prior
and the losses in ``lsgm_jax.models.hvae_losses``; the paper configurations (Table 5)
in ``lsgm_jax.presets.hvae``, their trainable-parameter counts pinned in
tests/test_hvae.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsgm_jax.models.hvae_layers import SPECTRAL_COLLECTION  # noqa: F401 (the model's collection)
from lsgm_jax.models.hvae_layers import Attention, Block, Resample, scaled_conv
from lsgm_jax.models.hvae_losses import gaussian_kl, guided_mean_std, smoothed_variance

Array = jax.Array

# RNG stream for the posterior noise and the label drop of classifier-free guidance.
SAMPLE_RNG = "sample"


# ---------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class HVAEConfig:
  """Architecture of a deep VAE (latent VAE paper, Table 5).

  Per-level sequences run from the highest resolution to the lowest.

  Attributes:
    resolution: side of the input (latent or pixel) image.
    channels: generator base width ``c``.
    enc_channels: encoder base width.
    channel_mult: per-level width multipliers (generator and encoder).
    ffn_ratio: per-level FFN expansion ratio; 0 selects the two-conv block.
    num_groups: per-level number of stochastic layers (latent groups).
    enc_layers: per-level number of encoder blocks.
    num_attention: per-level number of attention layers (encoder and generator each).
    attention_heads: per-level head count (ignored where ``num_attention`` is 0).
    reference_attention: multi-head attention layers output x + a projection of q, as
      the reference's defective ``AttentionLayer`` (for its released weights).
    data_channels: channels of the modelled image.
    z_channels: channels of every latent group.
    num_classes: > 0 makes the model class-conditional (hierarchical prior required).
    hierarchical_prior: learned prior p(z_i | z_<i) instead of N(0, I).
    lowres_conditioning: upsampler: the generator starts from a 1x1 projection of the
      input downsampled to the lowest resolution instead of a learned tensor.
    label_drop_prob: probability of replacing the label by the null label in training.
    remat: per-level rematerialisation switches (empty: none).
    sigma_q: std of the fixed-variance reconstruction target (Table 5).
    spectral_weight: weight of the spectral-norm penalty (Table 5 "SR penalty").
  """

  resolution: int
  channels: int
  enc_channels: int
  channel_mult: tuple[int, ...]
  ffn_ratio: tuple[int, ...]
  num_groups: tuple[int, ...]
  enc_layers: tuple[int, ...]
  num_attention: tuple[int, ...]
  attention_heads: tuple[int, ...]
  data_channels: int = 4
  z_channels: int = 16
  num_classes: int = 0
  hierarchical_prior: bool = False
  lowres_conditioning: bool = False
  label_drop_prob: float = 0.1
  remat: tuple[bool, ...] = ()
  sigma_q: float = 0.07
  spectral_weight: float = 0.1
  reference_attention: bool = False

  def __post_init__(self):
    n = len(self.channel_mult)
    for name in ("ffn_ratio", "num_groups", "enc_layers", "num_attention",
                 "attention_heads"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {n}")
    if self.remat and len(self.remat) != n:
      raise ValueError(f"remat has {len(self.remat)} entries, expected {n}")
    if self.num_classes > 0 and not self.hierarchical_prior:
      raise ValueError("a class-conditional model needs hierarchical_prior=True")
    for k, h, c in zip(self.num_attention, self.attention_heads, self.channel_mult):
      if k and (h < 1 or (self.channels * c) % h or (self.enc_channels * c) % h):
        raise ValueError(f"attention_heads {h} must divide the level width")

  @property
  def resolutions(self) -> tuple[int, ...]:
    return level_resolutions(self.resolution, len(self.channel_mult))

  @property
  def total_groups(self) -> int:
    return sum(self.num_groups)


def level_resolutions(resolution: int, num_levels: int) -> tuple[int, ...]:
  """Level sides: halve each time; a side below 4 collapses to 1 (appendix B)."""
  out, res = [], resolution
  for _ in range(num_levels):
    if res < 4:
      res = 1
    out.append(res)
    res //= 2
  return tuple(out)


def attention_positions(num_layers: int, num_attention: int, first: int = 1
                        ) -> tuple[int, ...]:
  """Layer indices after which an attention layer is inserted, evenly spaced.

  The reference's ``get_evenly_spaced_indices`` (latent-vae-jax ``general_utils.py``):
  ``round(i N / (K + 1))`` for i = 1..K, matched against the layer counter of each side:
  the generator counts its layers from 1 and the encoder its blocks from 0
  (``model.py``), so the same list puts encoder attention one block later, and an index
  outside a side's counter inserts nothing there. ``first`` is that side's first index
  (1 generator, 0 encoder); the result keeps the indices in
  ``first .. first + num_layers - 1``.
  """
  if num_attention == 0:
    return ()
  step = num_layers / (num_attention + 1)
  pos = {round(step * i) for i in range(1, num_attention + 1)}
  return tuple(sorted(i for i in pos if first <= i < first + num_layers))


def remat_from(resolutions: Sequence[int], min_resolution: int = 8) -> tuple[bool, ...]:
  """Remat switches that checkpoint every level at or above ``min_resolution``."""
  return tuple(r >= min_resolution for r in resolutions)


# ---------------------------------------------------------------------------
# Stochastic layers and levels


class StochasticLayer(nn.Module):
  """One latent group z_i: posterior, prior, z projection and shared block.

  Attributes:
    features: generator width at this level.
    z_channels: channels of z.
    resolution: side of the level (spectral weight, and 1x1 convs at side 1).
    ffn_ratio: FFN expansion of the blocks.
    out_scale: init scale of the residual-branch outputs (1/sqrt(total groups)).
    hierarchical_prior: learned prior (else N(0, I), the prior block then only
      provides the additive state h and its spectral penalty is dropped).
  """

  features: int
  z_channels: int
  resolution: int
  ffn_ratio: int
  out_scale: float
  hierarchical_prior: bool

  def setup(self):
    spatial = self.resolution >= 4
    sr = float(self.resolution)  # the reference weights the penalty by the resolution
    p_out = self.features + (2 * self.z_channels if self.hierarchical_prior else 0)
    self.merge = scaled_conv(self.features, 1)
    self.posterior = Block(self.features, 2 * self.z_channels, self.ffn_ratio, spatial,
                           1.0, sr)
    self.prior = Block(self.features, p_out, self.ffn_ratio, spatial, 1e-10, sr)
    self.z_proj = scaled_conv(self.features, 1, self.out_scale, use_bias=False)
    self.shared = Block(self.features, self.features, self.ffn_ratio, spatial,
                        self.out_scale)

  def _prior(self, x: Array, label: Array | None):
    """Returns (mean, std, h, penalty) of p(z_i | z_<i) and the additive state h."""
    out, penalty = self.prior(x, label)
    zc = self.z_channels
    if not self.hierarchical_prior:
      zeros = jnp.zeros(x.shape[:-1] + (zc,), x.dtype)
      return zeros, jnp.ones_like(zeros), out, jnp.zeros((), x.dtype)
    mean, raw, h = out[..., :zc], out[..., zc:2 * zc], out[..., 2 * zc:]
    return mean, jnp.sqrt(smoothed_variance(raw)), h, penalty

  def __call__(self, x: Array, acts: Array, eps: Array, cond_label: Array | None,
               prior_label: Array | None) -> tuple[Array, Array, Array]:
    """Posterior pass.

    Args:
      x: generator state ``[B,H,W,features]``.
      acts: encoder activations of this level ``[B,H,W,C_enc]``.
      eps: standard-normal noise ``[B,H,W,z_channels]``.
      cond_label: class embedding for the posterior (never dropped) or None.
      prior_label: class embedding for prior and shared block (maybe the null label).

    Returns:
      (new state, per-example KL(q || p) ``[B]``, scalar spectral penalty).
    """
    q_out, q_pen = self.posterior(self.merge(jnp.concatenate([x, acts], -1)), cond_label)
    q_mean, q_raw = jnp.split(q_out, 2, axis=-1)
    q_var = smoothed_variance(q_raw)
    p_mean, p_std, h, p_pen = self._prior(x, prior_label)
    kl = jnp.sum(gaussian_kl(q_mean, q_var, p_mean, p_std ** 2), axis=(1, 2, 3))
    z = q_mean + jnp.sqrt(q_var) * eps
    x, _ = self.shared(x + self.z_proj(z) + h, prior_label)
    return x, kl, q_pen + p_pen

  def sample(self, key: Array, x_c: Array, x_u: Array | None, label: Array | None,
             null_label: Array | None, w_mu: float, w_sigma: float,
             temperature: float) -> tuple[Array, Array | None]:
    """Prior pass; with ``x_u`` the unconditional state runs alongside (eq. 2).

    One z is drawn from the (guided) prior and projected into both states.
    """
    mean, std, h_c, _ = self._prior(x_c, label)
    if x_u is not None:
      mean_u, std_u, h_u, _ = self._prior(x_u, null_label)
      mean, std = guided_mean_std(mean, std, mean_u, std_u, w_mu, w_sigma)
    z = mean + std * temperature * jax.random.normal(key, mean.shape, mean.dtype)
    zp = self.z_proj(z)
    x_c, _ = self.shared(x_c + zp + h_c, label)
    if x_u is not None:
      x_u, _ = self.shared(x_u + zp + h_u, null_label)
    return x_c, x_u


class EncoderLevel(nn.Module):
  """Residual blocks with evenly spaced attention, then the downsampling step."""

  features: int
  num_layers: int
  num_attention: int
  heads: int
  resolution: int
  ffn_ratio: int
  out_scale: float
  next_features: int | None = None
  next_resolution: int | None = None
  remat: bool = False
  reference_attention: bool = False

  def setup(self):
    block_cls = nn.remat(Block) if self.remat else Block
    attn_cls = nn.remat(Attention) if self.remat else Attention
    self.blocks = [block_cls(self.features, self.features, self.ffn_ratio,
                             self.resolution >= 4, self.out_scale)
                   for _ in range(self.num_layers)]
    self.positions = attention_positions(self.num_layers, self.num_attention, first=0)
    self.attention = [attn_cls(self.features, self.heads, self.reference_attention)
                      for _ in self.positions]
    if self.next_resolution is not None:
      self.down = Resample(self.next_features, self.resolution // self.next_resolution,
                           up=False)

  def __call__(self, x: Array, label: Array | None) -> tuple[Array, Array]:
    """Returns (input of the next level, activations for this level's posteriors)."""
    for i, block in enumerate(self.blocks):  # 0-based, as the reference's encoder
      x, _ = block(x, label)
      if i in self.positions:
        x = self.attention[self.positions.index(i)](x)
    acts = x
    if self.next_resolution is not None:
      x = self.down(x)
    return x, acts


class DecoderLevel(nn.Module):
  """Stochastic layers with evenly spaced attention, then the upsampling step."""

  features: int
  z_channels: int
  num_layers: int
  num_attention: int
  heads: int
  resolution: int
  ffn_ratio: int
  out_scale: float
  hierarchical_prior: bool
  first_layer: int = 0
  next_features: int | None = None
  next_resolution: int | None = None
  remat: bool = False
  reference_attention: bool = False

  def setup(self):
    layer_cls = nn.remat(StochasticLayer) if self.remat else StochasticLayer
    attn_cls = nn.remat(Attention) if self.remat else Attention
    self.layers = [layer_cls(self.features, self.z_channels, self.resolution,
                             self.ffn_ratio, self.out_scale, self.hierarchical_prior)
                   for _ in range(self.num_layers)]
    self.positions = attention_positions(self.num_layers, self.num_attention)
    self.attention = [attn_cls(self.features, self.heads, self.reference_attention)
                      for _ in self.positions]
    if self.next_resolution is not None:
      self.up = Resample(self.next_features, self.next_resolution // self.resolution,
                         up=True)

  def __call__(self, x: Array, acts: Array, cond_label: Array | None,
               prior_label: Array | None) -> tuple[Array, list[Array], Array]:
    """Returns (state for the next level, per-layer KLs ``[B]``, spectral penalty)."""
    kls, penalty = [], jnp.zeros((), x.dtype)
    shape = x.shape[:-1] + (self.z_channels,)
    for i, layer in enumerate(self.layers, start=1):
      eps = jax.random.normal(self.make_rng(SAMPLE_RNG), shape, x.dtype)
      x, kl, pen = layer(x, acts, eps, cond_label, prior_label)
      kls.append(kl)
      penalty = penalty + pen
      if i in self.positions:
        x = self.attention[self.positions.index(i)](x)
    if self.next_resolution is not None:
      x = self.up(x)
    return x, kls, penalty

  def sample(self, key: Array, x_c: Array, x_u: Array | None, label: Array | None,
             null_label: Array | None, w_mu: float, w_sigma: float,
             temperature: float) -> tuple[Array, Array | None]:
    """Prior pass of this level; layer l draws its z with ``fold_in(key, l)``."""
    for i, layer in enumerate(self.layers, start=1):
      k = jax.random.fold_in(key, self.first_layer + i - 1)
      x_c, x_u = layer.sample(k, x_c, x_u, label, null_label, w_mu, w_sigma, temperature)
      if i in self.positions:
        attn = self.attention[self.positions.index(i)]
        x_c = attn(x_c)
        x_u = None if x_u is None else attn(x_u)
    if self.next_resolution is not None:
      x_c = self.up(x_c)
      x_u = None if x_u is None else self.up(x_u)
    return x_c, x_u


# ---------------------------------------------------------------------------
# Model


class HVAEOutput(NamedTuple):
  """Per-example terms of one posterior pass.

  Attributes:
    mean: predicted data mean ``[B,H,W,D]``.
    logvar: predicted data log-variance ``[B,H,W,D]``.
    kl: per-layer KL(q(z_i|.) || p(z_i|.)) ``[B, L]``, top (lowest resolution) first.
    spectral: weighted spectral-norm penalty (scalar, not yet times spectral_weight).
  """

  mean: Array
  logvar: Array
  kl: Array
  spectral: Array


class HVAE(nn.Module):
  """Deep hierarchical VAE of the latent VAE paper (appendix B); see module docstring."""

  config: HVAEConfig

  def setup(self):
    cfg = self.config
    res = cfg.resolutions
    n = len(res)
    dec_c = [cfg.channels * m for m in cfg.channel_mult]
    enc_c = [cfg.enc_channels * m for m in cfg.channel_mult]
    remat = cfg.remat or (False,) * n
    out_scale = 1.0 / math.sqrt(cfg.total_groups)
    if cfg.num_classes > 0:
      # The extra last entry is the null label of classifier-free guidance.
      self.embed = nn.Embed(cfg.num_classes + 1, dec_c[-1])
    self.enc_in = scaled_conv(enc_c[0], 3)
    self.encoder = [
        EncoderLevel(enc_c[i], cfg.enc_layers[i], cfg.num_attention[i],
                     cfg.attention_heads[i], res[i], cfg.ffn_ratio[i], out_scale,
                     enc_c[i + 1] if i + 1 < n else None,
                     res[i + 1] if i + 1 < n else None, remat[i],
                     cfg.reference_attention)
        for i in range(n)]
    if cfg.lowres_conditioning:
      self.lowres_in = scaled_conv(dec_c[-1], 1)
    else:
      self.initial_x = self.param("initial_x", nn.initializers.zeros,
                                  (1, res[-1], res[-1], dec_c[-1]))
    first = [sum(cfg.num_groups[j] for j in range(i + 1, n)) for i in range(n)]
    self.decoder = [
        DecoderLevel(dec_c[i], cfg.z_channels, cfg.num_groups[i], cfg.num_attention[i],
                     cfg.attention_heads[i], res[i], cfg.ffn_ratio[i], out_scale,
                     cfg.hierarchical_prior, first[i],
                     dec_c[i - 1] if i > 0 else None, res[i - 1] if i > 0 else None,
                     remat[i], cfg.reference_attention)
        for i in reversed(range(n))]
    self.out_proj = scaled_conv(2 * cfg.data_channels, 1)

  def _initial_state(self, batch: int, lowres: Array | None) -> Array:
    if self.config.lowres_conditioning:
      if lowres is None:
        raise ValueError("an upsampler needs the low-resolution image")
      return self.lowres_in(lowres)
    return jnp.tile(self.initial_x, (batch, 1, 1, 1))

  def downsample_input(self, x: Array) -> Array:
    """Bilinear downsampling of ``x`` to the lowest level (the upsampler's input)."""
    r = self.config.resolutions[-1]
    return jax.image.resize(x, (x.shape[0], r, r, x.shape[-1]), method="bilinear")

  def __call__(self, x: Array, label: Array | None = None, *,
               drop_labels: bool = True) -> HVAEOutput:
    """Posterior pass: encode ``x``, run every stochastic layer, predict ``x``.

    Needs the ``sample`` RNG stream (posterior noise, label drop); pass
    ``mutable=["spectral"]`` to advance the power iteration.

    Args:
      x: data ``[B,H,W,data_channels]`` (normalised latents or pixels).
      label: integer classes ``[B]`` for class-conditional models.
      drop_labels: replace the prior's label by the null label with probability
        ``label_drop_prob`` (classifier-free guidance training).

    Returns:
      :class:`HVAEOutput`.
    """
    cfg = self.config
    cond = prior = None
    if cfg.num_classes > 0:
      if label is None:
        raise ValueError("class-conditional model called without labels")
      prior_label = label
      if drop_labels and cfg.label_drop_prob > 0:
        drop = jax.random.uniform(self.make_rng(SAMPLE_RNG), label.shape) < cfg.label_drop_prob
        prior_label = jnp.where(drop, cfg.num_classes, label)
      cond, prior = self.embed(label), self.embed(prior_label)
    h = self.enc_in(x)
    acts = []
    for level in self.encoder:
      h, a = level(h, cond)
      acts.append(a)
    lowres = self.downsample_input(x) if cfg.lowres_conditioning else None
    s = self._initial_state(x.shape[0], lowres)
    kls, penalty = [], jnp.zeros((), x.dtype)
    for level, a in zip(self.decoder, reversed(acts)):
      s, k, p = level(s, a, cond, prior)
      kls.extend(k)
      penalty = penalty + p
    mean, logvar = jnp.split(self.out_proj(s), 2, axis=-1)
    return HVAEOutput(mean, logvar, jnp.stack(kls, axis=-1), penalty)

  def sample(self, key: Array, num: int, label: Array | None = None, *,
             lowres: Array | None = None, guided: bool = False, w_mu: float = 0.0,
             w_sigma: float = 0.0, temperature: float = 1.0,
             guide_mean_at_1x1: bool = True) -> Array:
    """Ancestral sampling from the prior, optionally with guidance (eq. 2).

    Args:
      key: PRNG key; stochastic layer l (top first) uses ``fold_in(key, l)``, so a
        guided and an unguided call with the same key share their noise.
      num: number of samples.
      label: integer classes ``[num]`` (class-conditional models).
      lowres: low-resolution image at the lowest level (upsampler only).
      guided: run the unconditional (null-label) state alongside and sample from
        the guided prior of eq. 2 (needs a class-conditional model).
      w_mu, w_sigma: guidance weights of the prior mean and std.
      temperature: multiplies the prior std.
      guide_mean_at_1x1: if False, ``w_mu`` is not applied at 1x1 latents.

    Returns:
      Predicted data means ``[num,H,W,data_channels]``.
    """
    cfg = self.config
    label_emb = null_emb = None
    if cfg.num_classes > 0:
      if label is None:
        raise ValueError("class-conditional model sampled without labels")
      label_emb = self.embed(label)
      null_emb = self.embed(jnp.full_like(label, cfg.num_classes))
    elif guided:
      raise ValueError("guidance needs a class-conditional model")
    x_c = self._initial_state(num, lowres)
    x_u = x_c if guided else None
    for level in self.decoder:
      wm = w_mu if (guide_mean_at_1x1 or level.resolution > 1) else 0.0
      x_c, x_u = level.sample(key, x_c, x_u, label_emb, null_emb, wm, w_sigma, temperature)
    return jnp.split(self.out_proj(x_c), 2, axis=-1)[0]


@functools.lru_cache(maxsize=32)
def count_params(config: HVAEConfig, batch: int = 1) -> int:
  """Trainable parameters (``params`` collection) of ``HVAE(config)``, via eval_shape
  (memoised: tracing a paper-size model takes seconds; configs are frozen)."""
  model = HVAE(config)
  r = config.resolution
  x = jnp.zeros((batch, r, r, config.data_channels))
  label = jnp.zeros((batch,), jnp.int32) if config.num_classes > 0 else None
  keys = {"params": jax.random.PRNGKey(0), SAMPLE_RNG: jax.random.PRNGKey(1)}
  shapes = jax.eval_shape(lambda: model.init(keys, x, label))
  return sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(shapes["params"]))
