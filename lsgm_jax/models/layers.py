"""Shared building blocks of the score networks (NHWC throughout).

What is here, and where it comes from:
  * ``default_init``: DDPM's variance-scaling initialiser (fan_avg, uniform), used by every
    dense / convolution layer of score_sde's DDPM and NCSN++ and of CLD-SGM / LSGM's
    copies of NCSN++. ``init_scale == 0`` becomes ``1e-10`` exactly as there, so a
    "zero-initialised" layer is numerically ~0 but still has a gradient direction.
  * time embeddings: ``sinusoidal_embedding`` (the DDPM / Transformer positional code)
    and ``GaussianFourierProjection`` (random Fourier features, NCSN++ paper Sec. H).
  * the fused FIR resampling convolution ``Conv2d`` with ``up`` / ``down`` (the FIR
    filters themselves, StyleGAN2's ``upfirdn2d``, are in ``lsgm_jax.models.fir``).
  * ``NIN`` (a per-pixel dense layer), ``AttnBlock`` (single-head spatial self-attention),
    ``group_norm`` with a group count that adapts to small channel counts.

Parameters are always float32; every module takes ``dtype`` for its computation.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsgm_jax.models import fir
from lsgm_jax.models.conv import conv_general_dilated

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


# ----------------------------------------------------------------------------- init

def default_init(scale: float = 1.0) -> Initializer:
  """DDPM initialiser: variance scaling, fan_avg, uniform (score_sde ``default_init``).

  Args:
    scale: variance scale; 0 is replaced by 1e-10 as in the references (so
      ``init_scale=0`` layers start numerically at zero).

  Returns:
    A flax initialiser ``init(key, shape, dtype)``.
  """
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def num_groups_for(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
  """GroupNorm group count: ``min(channels // 4, 32)`` (NCSN++), adapted to divide ``channels``.

  For the channel counts of the reference models (multiples of 128 / 4) this is exactly
  the references' ``min(C // 4, 32)``; for small or odd channel counts it falls back to
  the largest divisor of ``channels`` not above that target (at least 1).

  Args:
    channels: number of channels normalised.
    max_groups: upper bound on the group count.
    min_group_size: minimum number of channels per group.

  Returns:
    The number of groups.
  """
  target = max(1, min(channels // min_group_size, max_groups))
  for g in range(target, 0, -1):
    if channels % g == 0:
      return g
  return 1


def group_norm(channels: int, dtype: Dtype, name: str | None = None,
               max_groups: int = 32, epsilon: float = 1e-6) -> nn.GroupNorm:
  """A GroupNorm with the NCSN++ group rule and eps 1e-6 (score_sde layerspp)."""
  return nn.GroupNorm(num_groups=num_groups_for(channels, max_groups), epsilon=epsilon,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


def conv3x3(features: int, dtype: Dtype, init_scale: float = 1.0, use_bias: bool = True,
            name: str | None = None) -> nn.Conv:
  """3x3 'SAME' convolution with DDPM init (score_sde ``ddpm_conv3x3``)."""
  return nn.Conv(features, (3, 3), padding="SAME", use_bias=use_bias,
                 conv_general_dilated=conv_general_dilated,
                 kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


def conv1x1(features: int, dtype: Dtype, init_scale: float = 1.0, use_bias: bool = True,
            name: str | None = None) -> nn.Conv:
  """1x1 convolution with DDPM init (score_sde ``ddpm_conv1x1``)."""
  return nn.Conv(features, (1, 1), padding="VALID", use_bias=use_bias,
                 conv_general_dilated=conv_general_dilated,
                 kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, dtype: Dtype, init_scale: float = 1.0,
          name: str | None = None) -> nn.Dense:
  """Dense layer with DDPM init and zero bias (the time-embedding MLP and projections)."""
  return nn.Dense(features, kernel_init=default_init(init_scale),
                  bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32,
                  name=name)


class NIN(nn.Module):
  """Network-in-network: a dense layer over the channel axis of an NHWC map.

  Same parameters as a 1x1 convolution (``[C_in, C_out]`` kernel + bias); score_sde's
  ``NIN`` defaults to ``init_scale=0.1``.
  """

  features: int
  init_scale: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x ``[..., C_in]``. Returns: ``[..., features]``."""
    return dense(self.features, self.dtype, self.init_scale, name="dense")(x)


# ------------------------------------------------------------------ time embeddings

def sinusoidal_embedding(t: Array, dim: int, max_positions: float = 10000.0) -> Array:
  """Sinusoidal (Transformer / DDPM) embedding of (already scaled) times.

  ``[sin(t * f_k), cos(t * f_k)]`` with ``f_k = max_positions ** (-k / (dim/2 - 1))``;
  odd ``dim`` is zero-padded (score_sde ``get_timestep_embedding``).

  Args:
    t: ``[B]`` times (e.g. ``999 * t`` for score_sde's continuous VP DDPM, ``1000 * t``
      for LSGM).
    dim: number of features.
    max_positions: the base of the frequency ladder.

  Returns:
    ``[B, dim]`` float32 features.
  """
  t = jnp.asarray(t, jnp.float32)
  half = dim // 2
  freqs = jnp.exp(-math.log(max_positions) / max(half - 1, 1)
                  * jnp.arange(half, dtype=jnp.float32))
  args = t[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


FOURIER_COLLECTION = "constants"  # non-trainable variables that land in TrainState.model_state


class GaussianFourierProjection(nn.Module):
  """Random Fourier features ``[sin(2 pi W t), cos(2 pi W t)]``, ``W ~ N(0, scale^2)``.

  The frequencies are *fixed*: in the references (score_sde / CLD-SGM
  ``layerspp.GaussianFourierProjection``) they are a ``requires_grad=False`` Parameter,
  random at init and saved in the state dict (CLD-SGM ``all_modules.0.W``). Here they
  are the variable ``W`` of the non-trainable collection ``"constants"``, initialised
  deterministically with NumPy from ``seed`` (identical on every host), so they are
  checkpointed with ``TrainState.model_state`` and an imported reference file can set
  them (``--mode=import``), while the trainable parameter count is unchanged. A caller
  that applies the module without that collection gets the seed's constants.

  Attributes:
    embedding_size: number of frequencies (output has twice as many features).
    scale: standard deviation of the frequencies (16 for CLD-SGM CIFAR-10).
    seed: NumPy seed of the frequencies.
  """

  embedding_size: int = 128
  scale: float = 16.0
  seed: int = 0

  def frequencies(self) -> np.ndarray:
    """The initial frequencies ``W`` (``[embedding_size]``, float32)."""
    rs = np.random.RandomState(self.seed)
    return (rs.standard_normal(self.embedding_size) * self.scale).astype(np.float32)

  @nn.compact
  def __call__(self, t: Array) -> Array:
    """Args: t ``[B]``. Returns: ``[B, 2 * embedding_size]`` float32."""
    if self.is_initializing() or self.has_variable(FOURIER_COLLECTION, "W"):
      w = self.variable(FOURIER_COLLECTION, "W",
                        lambda: jnp.asarray(self.frequencies())).value
    else:
      w = jnp.asarray(self.frequencies())
    proj = jnp.asarray(t, jnp.float32)[:, None] * w[None, :] * (2.0 * np.pi)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Conv2d(nn.Module):
  """Convolution with optional fused FIR up/down-sampling (StyleGAN2 ``Conv2d``).

  ``up``: transposed convolution (stride 2) followed by the FIR filter;
  ``down``: FIR filter followed by a stride-2 valid convolution; neither: plain
  'SAME' convolution. Kernel ``[k, k, C_in, C_out]`` with DDPM init, bias zeros.

  Attributes:
    features: output channels.
    kernel_size: odd spatial size of the kernel.
    up: upsample by 2.
    down: downsample by 2.
    fir_kernel: the separable FIR taps.
    use_bias: add a bias.
    init_scale: DDPM init scale of the kernel.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int = 3
  up: bool = False
  down: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  use_bias: bool = True
  init_scale: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x ``[B, H, W, C_in]``. Returns: ``[B, H', W', features]``."""
    if self.up and self.down:
      raise ValueError("Conv2d: up and down are exclusive")
    ks = self.kernel_size
    w = self.param("kernel", default_init(self.init_scale),
                   (ks, ks, x.shape[-1], self.features), jnp.float32)
    w = w.astype(self.dtype)
    x = x.astype(self.dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    factor = 2
    if self.up:
      x = fir.fir_upsample_conv(x, w, fir.fir_kernel(self.fir_kernel, factor ** 2), factor)
    elif self.down:
      kernel = fir.fir_kernel(self.fir_kernel, 1.0)
      p = (kernel.shape[0] - factor) + (ks - 1)
      x = fir.upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
      x = jax.lax.conv_general_dilated(x, w, (factor, factor), "VALID", dimension_numbers=dn)
    else:
      x = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      x = x + b.astype(self.dtype)
    return x


# -------------------------------------------------------------------- attention

class AttnBlock(nn.Module):
  """Single-head spatial self-attention with a residual.

  DDPM ``AttnBlock`` / NCSN++ ``AttnBlockpp``.
  GroupNorm, three NINs for q, k, v, softmax over all positions (computed in float32),
  an output NIN initialised with ``init_scale``, then ``x + h`` (divided by sqrt 2 with
  ``skip_rescale``). Parameters: ``2C + 4 (C^2 + C)``.

  Attributes:
    init_scale: init scale of the output NIN (0 -> starts as the identity).
    skip_rescale: divide the residual sum by sqrt(2).
    max_groups: cap on the GroupNorm group count.
    dtype: computation dtype.
  """

  init_scale: float = 0.0
  skip_rescale: bool = False
  max_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x ``[B, H, W, C]``. Returns: ``[B, H, W, C]``."""
    b, hh, ww, c = x.shape
    h = group_norm(c, self.dtype, "norm", self.max_groups)(x)
    q = NIN(c, dtype=self.dtype, name="q")(h)
    k = NIN(c, dtype=self.dtype, name="k")(h)
    v = NIN(c, dtype=self.dtype, name="v")(h)
    logits = jnp.einsum("bhwc,bijc->bhwij", q, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, hh, ww, hh * ww) * (c ** -0.5)
    w = jax.nn.softmax(logits, axis=-1).reshape(b, hh, ww, hh, ww).astype(self.dtype)
    h = jnp.einsum("bhwij,bijc->bhwc", w, v)
    h = NIN(c, init_scale=self.init_scale, dtype=self.dtype, name="out")(h)
    out = x.astype(self.dtype) + h
    return out / math.sqrt(2.0) if self.skip_rescale else out


# ------------------------------------------------------------------ residual blocks

class ResnetBlockDDPM(nn.Module):
  """DDPM residual block (score_sde ``ResnetBlockDDPM`` / NCSN++ ``ResnetBlockDDPMpp``).

  GroupNorm -> act -> conv3x3 -> + Dense(act(temb)) -> GroupNorm -> act -> dropout ->
  conv3x3 (``init_scale``); the shortcut is a NIN (or a 3x3 conv with ``conv_shortcut``)
  only when the channel count changes.

  Attributes:
    out_ch: output channels (``None``: same as input).
    dropout: dropout rate.
    init_scale: init scale of the last convolution (DDPM: 0).
    skip_rescale: divide the residual sum by sqrt(2) (NCSN++).
    conv_shortcut: use a 3x3 conv instead of a NIN on the shortcut.
    max_groups: cap on the GroupNorm group count.
    act: the nonlinearity (Swish / SiLU in all references).
    dtype: computation dtype.
  """

  out_ch: int | None = None
  dropout: float = 0.1
  init_scale: float = 0.0
  skip_rescale: bool = False
  conv_shortcut: bool = False
  max_groups: int = 32
  act: Callable[[Array], Array] = nn.silu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
    """Args: x ``[B,H,W,C]``, temb ``[B,E]`` or None, train. Returns ``[B,H,W,out_ch]``."""
    c = x.shape[-1]
    out_ch = self.out_ch or c
    x = x.astype(self.dtype)
    h = self.act(group_norm(c, self.dtype, "norm_0", self.max_groups)(x))
    h = conv3x3(out_ch, self.dtype, name="conv_0")(h)
    if temb is not None:
      h = h + dense(out_ch, self.dtype, name="temb_proj")(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(out_ch, self.dtype, "norm_1", self.max_groups)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_ch, self.dtype, init_scale=self.init_scale, name="conv_1")(h)
    if c != out_ch:
      if self.conv_shortcut:
        x = conv3x3(out_ch, self.dtype, name="shortcut")(x)
      else:
        x = NIN(out_ch, dtype=self.dtype, name="shortcut")(x)
    out = x + h
    return out / math.sqrt(2.0) if self.skip_rescale else out


class ResnetBlockBigGAN(nn.Module):
  """BigGAN-type residual block of NCSN++ (score_sde / CLD-SGM ``ResnetBlockBigGANpp``).

  Like the DDPM block, but it can resample: with ``up`` / ``down`` both the residual
  branch (after the first GroupNorm + act) and the shortcut are FIR-resampled (or
  nearest / average-pooled without ``fir``). The shortcut is a 1x1 conv whenever the
  channel count changes *or* the block resamples -- so every up/down block carries one
  (this decides the NCSN++ parameter count, REFERENCE_NOTES.md).

  Attributes:
    out_ch: output channels (``None``: same as input).
    up: upsample by 2.
    down: downsample by 2.
    dropout: dropout rate.
    fir: FIR (True) or naive resampling.
    fir_kernel: FIR taps.
    init_scale: init scale of the last convolution.
    skip_rescale: divide the residual sum by sqrt(2).
    max_groups: cap on the GroupNorm group count.
    act: the nonlinearity.
    dtype: computation dtype.
  """

  out_ch: int | None = None
  up: bool = False
  down: bool = False
  dropout: float = 0.1
  fir: bool = True
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  init_scale: float = 0.0
  skip_rescale: bool = True
  max_groups: int = 32
  act: Callable[[Array], Array] = nn.silu
  dtype: Dtype = jnp.float32

  def _resample(self, x: Array) -> Array:
    if self.up:
      return fir.upsample_2d(x, self.fir_kernel) if self.fir else fir.naive_upsample_2d(x)
    if self.down:
      return fir.downsample_2d(x, self.fir_kernel) if self.fir else fir.naive_downsample_2d(x)
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
    """Args: x ``[B,H,W,C]``, temb ``[B,E]`` or None, train. Returns ``[B,H',W',out_ch]``."""
    if self.up and self.down:
      raise ValueError("ResnetBlockBigGAN: up and down are exclusive")
    c = x.shape[-1]
    out_ch = self.out_ch or c
    x = x.astype(self.dtype)
    h = self.act(group_norm(c, self.dtype, "norm_0", self.max_groups)(x))
    h = self._resample(h)
    x = self._resample(x)
    h = conv3x3(out_ch, self.dtype, name="conv_0")(h)
    if temb is not None:
      h = h + dense(out_ch, self.dtype, name="temb_proj")(self.act(temb))[:, None, None, :]
    h = self.act(group_norm(out_ch, self.dtype, "norm_1", self.max_groups)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_ch, self.dtype, init_scale=self.init_scale, name="conv_1")(h)
    if c != out_ch or self.up or self.down:
      x = conv1x1(out_ch, self.dtype, name="shortcut")(x)
    out = x + h
    return out / math.sqrt(2.0) if self.skip_rescale else out


# ------------------------------------------------------------ resampling modules

class Downsample(nn.Module):
  """Halves the resolution (score_sde ``layerspp.Downsample``).

  ``fir`` and ``with_conv``: fused FIR + stride-2 3x3 conv (``Conv2d(down=True)``);
  ``fir`` only: FIR filter; ``with_conv`` only: 3x3 stride-2 'SAME' conv (pads (0, 1)
  like the references); neither: 2x2 average pooling.

  Attributes:
    out_ch: output channels when ``with_conv`` (``None``: same as input).
    with_conv: learn a convolution.
    fir: FIR resampling.
    fir_kernel: FIR taps.
    dtype: computation dtype.
  """

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x ``[B,H,W,C]``. Returns ``[B,H/2,W/2,out_ch or C]``."""
    out_ch = self.out_ch or x.shape[-1]
    x = x.astype(self.dtype)
    if self.fir:
      if self.with_conv:
        return Conv2d(out_ch, 3, down=True, fir_kernel=self.fir_kernel, dtype=self.dtype,
                      name="conv")(x)
      return fir.downsample_2d(x, self.fir_kernel)
    if self.with_conv:
      return nn.Conv(out_ch, (3, 3), strides=(2, 2), padding="SAME",
                     kernel_init=default_init(), bias_init=nn.initializers.zeros,
                     dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
    return fir.naive_downsample_2d(x)


class Upsample(nn.Module):
  """Doubles the resolution (score_sde ``layerspp.Upsample``).

  ``fir`` and ``with_conv``: fused transposed 3x3 conv + FIR (``Conv2d(up=True)``);
  ``fir`` only: FIR upsampling; otherwise nearest-neighbour, then a 3x3 conv if
  ``with_conv``.

  Attributes:
    out_ch: output channels when ``with_conv`` (``None``: same as input).
    with_conv: learn a convolution.
    fir: FIR resampling.
    fir_kernel: FIR taps.
    dtype: computation dtype.
  """

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x ``[B,H,W,C]``. Returns ``[B,2H,2W,out_ch or C]``."""
    out_ch = self.out_ch or x.shape[-1]
    x = x.astype(self.dtype)
    if self.fir:
      if self.with_conv:
        return Conv2d(out_ch, 3, up=True, fir_kernel=self.fir_kernel, dtype=self.dtype,
                      name="conv")(x)
      return fir.upsample_2d(x, self.fir_kernel)
    h = fir.naive_upsample_2d(x)
    if self.with_conv:
      h = conv3x3(out_ch, self.dtype, name="conv")(h)
    return h


class Combine(nn.Module):
  """Merges a progressive-input pyramid level into the features (NCSN++ ``Combine``).

  A 1x1 conv maps the pyramid to the feature width, then ``"sum"`` adds or ``"cat"``
  concatenates (doubling the channels).

  Attributes:
    method: ``"sum"`` or ``"cat"``.
    dtype: computation dtype.
  """

  method: str = "sum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pyramid: Array, h: Array) -> Array:
    """Args: pyramid ``[B,H,W,P]``, h ``[B,H,W,C]``. Returns ``[B,H,W,C]`` or ``[B,H,W,2C]``."""
    y = conv1x1(h.shape[-1], self.dtype, name="conv")(pyramid.astype(self.dtype))
    if self.method == "sum":
      return y + h
    if self.method == "cat":
      return jnp.concatenate([y, h], axis=-1)
    raise ValueError(f"Combine.method must be 'sum' or 'cat', got {self.method!r}")
