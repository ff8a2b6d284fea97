"""Building blocks of LSGM's NVAE (NHWC throughout).

What is here (the NVAE / LSGM reference's ``layers/`` rewritten for Flax):
  * ``WNConv``: a convolution whose kernel is weight-normalised per output channel with a
    learned log-gain (``log_gain``, one entry per output channel, a parameter), optionally
    autoregressively masked (the IAF cells). When the ``spectral`` collection is mutable it
    also runs a few power iterations on the (normalised) kernel, keeps the singular vector
    estimates ``u`` / ``v`` there, and sows the spectral-norm estimate ``sigma = u^T W v``
    into the ``losses`` collection (NVAE's spectral regularisation, Sec. 3.2 of the NVAE
    paper). ``weight_norm=False`` gives the plain convolutions of the MBConv cells, which
    still take part in the spectral penalty.
  * ``BatchNorm`` (+ Swish) with the reference's momentum 0.05 (flax 0.95) and eps 1e-5;
    running statistics live in ``batch_stats``, scale / bias are parameters.
  * ``SqueezeExcite``, ``FactorizedReduce`` (the stride-2 skip), the align-corners
    bilinear ``upsample2x_bilinear`` (the upsampling skip), ``BNSwishConv``,
    ``InvertedResidual`` (MBConv), ``Cell`` (skip + 0.1 * branch, SE at the end),
    ``EncCombiner`` / ``DecCombiner``, ``InputSkipCombiner`` (the encoder's input
    pyramid) and the autoregressive flow cells
    (``PairedCellAR``).

The cell recipes (``ARCH_CELLS``) are the reference's ``res_bnswish`` and ``res_mbconv``
architecture instances.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BN_EPS = 1e-5
BN_MOMENTUM = 0.95  # PyTorch momentum 0.05 in the reference.

# Operation recipes per cell type (NVAE ``get_arch_cells``). Each entry lists the ops
# of the conv branch; every cell ends with squeeze-and-excitation when ``use_se``.
ARCH_CELLS = {
    "res_bnswish": {
        "normal_pre": ("res_bnswish", "res_bnswish"),
        "down_pre": ("res_bnswish", "res_bnswish"),
        "normal_enc": ("res_bnswish", "res_bnswish"),
        "down_enc": ("res_bnswish", "res_bnswish"),
        "normal_dec": ("res_bnswish", "res_bnswish"),
        "up_dec": ("res_bnswish", "res_bnswish"),
        "normal_post": ("res_bnswish", "res_bnswish"),
        "up_post": ("res_bnswish", "res_bnswish"),
    },
    "res_mbconv": {
        "normal_pre": ("res_bnswish", "res_bnswish"),
        "down_pre": ("res_bnswish", "res_bnswish"),
        "normal_enc": ("res_bnswish", "res_bnswish"),
        "down_enc": ("res_bnswish", "res_bnswish"),
        "normal_dec": ("mconv_e6k5",),
        "up_dec": ("mconv_e6k5",),
        "normal_post": ("mconv_e3k5",),
        "up_post": ("mconv_e3k5",),
    },
}


def swish(x: Array) -> Array:
  """Swish / SiLU activation."""
  return x * jax.nn.sigmoid(x)


def stride_for_cell_type(cell_type: str) -> int:
  """1 for normal / combiner cells, 2 for ``down*`` cells, -1 (upsample) for ``up*``."""
  if cell_type.startswith("normal") or cell_type.startswith("combiner"):
    return 1
  if cell_type.startswith("down"):
    return 2
  if cell_type.startswith("up"):
    return -1
  raise ValueError(f"unknown cell type {cell_type!r}")


def _normalize(x: Array, axis: int = -1, eps: float = 1e-3) -> Array:
  """``x / max(||x||, eps)`` along ``axis`` (PyTorch ``F.normalize``)."""
  n = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(n, eps)


# ----------------------------------------------------------------------------- masks

def _channel_mask(c_in: int, g_in: int, c_out: int, zero_diag: bool) -> np.ndarray:
  """Centre-tap channel mask of an autoregressive conv, layout ``[c_out, c_in // g_in]``."""
  if g_in == c_in:  # depthwise: each output only sees its own channel
    mask = np.ones([c_out, 1], dtype=np.float32)
    return mask * 0.0 if zero_diag else mask
  assert g_in == 1, "autoregressive convs are dense or depthwise"
  assert c_in % c_out == 0 or c_out % c_in == 0, (c_in, c_out)
  mask = np.ones([c_out, c_in], dtype=np.float32)
  if c_out >= c_in:
    ratio = c_out // c_in
    for i in range(c_in):
      rows = slice(i * ratio, (i + 1) * ratio)
      mask[rows, i + 1:] = 0
      if zero_diag:
        mask[rows, i] = 0
  else:
    ratio = c_in // c_out
    for i in range(c_out):
      mask[i, (i + 1) * ratio:] = 0
      if zero_diag:
        mask[i, i * ratio:(i + 1) * ratio] = 0
  return mask


def ar_conv_mask(kernel_size: int, c_in: int, groups: int, c_out: int, zero_diag: bool,
                 mirror: bool) -> np.ndarray:
  """Autoregressive (raster-order, optionally mirrored) kernel mask in HWIO layout.

  Pixels above the centre row and left of the centre are visible; at the centre the
  channel order decides (``_channel_mask``). ``mirror`` flips the order spatially.
  """
  m = (kernel_size - 1) // 2
  mask = np.ones([c_out, c_in // groups, kernel_size, kernel_size], dtype=np.float32)
  mask[:, :, m:, :] = 0
  mask[:, :, m, :m] = 1
  mask[:, :, m, m] = _channel_mask(c_in, groups, c_out, zero_diag)
  if mirror:
    mask = mask[:, :, ::-1, ::-1]
  return np.ascontiguousarray(np.transpose(mask, (2, 3, 1, 0)))


# ----------------------------------------------------------------------------- conv

def _torch_conv_init(key, shape, dtype=jnp.float32):
  """PyTorch's default conv init (kaiming uniform, a=sqrt(5)): U(-1/sqrt(fan_in), +)."""
  fan_in = int(np.prod(shape[:-1]))
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class WNConv(nn.Module):
  """Weight-normalised 2-D convolution with a learned per-output-channel log-gain.

  ``W = exp(log_gain) * V / (||V|| + 1e-5)`` with the norm over (kh, kw, c_in) of each
  output channel; ``log_gain`` starts at ``log(||V|| + 1e-2) + log(gain_init)``.

  Attributes:
    features: output channels.
    kernel_size: square kernel size (odd).
    stride: spatial stride.
    use_bias: add a bias.
    weight_norm: normalise the kernel (no ``log_gain`` otherwise).
    groups: feature groups (``groups == c_in`` is depthwise).
    dilation: kernel dilation.
    ar_mask: ``None`` or ``(zero_diag, mirror)`` for an autoregressively masked conv.
    gain_init: multiplies the initial gain (the IAF output layers use 0.1).
    num_power_iter: power iterations per call when ``spectral`` is mutable (10x on the
      first call, as in the reference).
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = True
  weight_norm: bool = True
  groups: int = 1
  dilation: int = 1
  ar_mask: Optional[Tuple[bool, bool]] = None
  gain_init: float = 1.0
  num_power_iter: int = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c_in = x.shape[-1]
    k = self.kernel_size
    shape = (k, k, c_in // self.groups, self.features)
    v = self.param("kernel", _torch_conv_init, shape)
    mask = None
    if self.ar_mask is not None:
      mask = jnp.asarray(ar_conv_mask(k, c_in, self.groups, self.features, *self.ar_mask))
      v = v * mask
    if self.weight_norm:
      log_gain = self.param(
          "log_gain",
          lambda _: jnp.log(jnp.sqrt(jnp.sum(v * v, axis=(0, 1, 2))) + 1e-2)
          + np.log(self.gain_init))
      w = jnp.exp(log_gain) * v / (jnp.sqrt(jnp.sum(v * v, axis=(0, 1, 2))) + 1e-5)
    else:
      w = v
    self._spectral(w)
    pad = self.dilation * (k - 1) // 2
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)), rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    if self.use_bias:
      b = self.param("bias", _torch_bias_init(c_in // self.groups * k * k), (self.features,))
      y = y + b.astype(y.dtype)
    return y

  def _spectral(self, w: Array) -> None:
    """Power iteration on ``w`` (as ``[c_out, kh * kw * c_in]``); sows ``u^T W v``."""
    if not self.is_mutable_collection("spectral"):
      return
    mat = jnp.transpose(w, (3, 0, 1, 2)).reshape(w.shape[-1], -1)
    first = not self.has_variable("spectral", "u")
    u_var = self.variable(
        "spectral", "u",
        lambda: _normalize(jax.random.normal(self.make_rng("params"), (mat.shape[0],))))
    v_var = self.variable(
        "spectral", "v",
        lambda: _normalize(jax.random.normal(self.make_rng("params"), (mat.shape[1],))))
    m = jax.lax.stop_gradient(mat)
    u, v = u_var.value, v_var.value
    u, v = _power_iteration(m, u, v, self.num_power_iter * (10 if first else 1))
    u_var.value, v_var.value = u, v
    self.sow("losses", "spectral", u @ (mat @ v))


@functools.partial(jax.jit, static_argnums=3)
def _power_iteration(mat: Array, u: Array, v: Array, num_iter: int) -> Tuple[Array, Array]:
  """``num_iter`` power iterations for the top singular vectors of ``mat``.

  A module-level jitted function so that un-jitted (eager) calls hit the compile cache.
  """

  def step(_, uv):
    v = _normalize(uv[0] @ mat)
    return _normalize(mat @ v), v

  return jax.lax.fori_loop(0, num_iter, step, (u, v))


def _torch_bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def batch_norm(train: bool, axis_name: Optional[str], name: Optional[str] = None) -> nn.BatchNorm:
  """BatchNorm with the reference's momentum / eps; synchronised over ``axis_name``."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      axis_name=axis_name, name=name)


# ----------------------------------------------------------------------------- resampling

def _align_corners_matrix(n: int) -> np.ndarray:
  """``[2n, n]`` linear interpolation matrix for 2x upsampling with align_corners=True."""
  out = 2 * n
  mat = np.zeros([out, n], dtype=np.float32)
  if n == 1:
    mat[:, 0] = 1.0
    return mat
  pos = np.arange(out) * (n - 1) / (out - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, n - 2)
  frac = pos - lo
  mat[np.arange(out), lo] = 1.0 - frac
  mat[np.arange(out), lo + 1] += frac
  return mat


def upsample2x_bilinear(x: Array) -> Array:
  """2x bilinear upsampling with ``align_corners=True`` (the reference's skip path)."""
  _, h, w, _ = x.shape
  mh = jnp.asarray(_align_corners_matrix(h), x.dtype)
  mw = jnp.asarray(_align_corners_matrix(w), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x)


def upsample2x_nearest(x: Array) -> Array:
  """2x nearest-neighbour upsampling."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ----------------------------------------------------------------------------- blocks

class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation: channel gates from a 2-layer MLP (hidden max(C/16, 4))."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    se = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    se = nn.relu(nn.Dense(max(c // 16, 4), name="fc1")(se))
    se = jax.nn.sigmoid(nn.Dense(c, name="fc2")(se))
    return x * se[:, None, None, :].astype(x.dtype)


class FactorizedReduce(nn.Module):
  """Stride-2 skip: swish, then four 1x1 stride-2 convs on shifted copies, concatenated."""

  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    assert self.features % 2 == 0
    x = swish(x)
    q = self.features // 4
    sizes = (q, q, q, self.features - 3 * q)
    shifted = (x, x[:, 1:, 1:], x[:, :, 1:], x[:, 1:, :])
    outs = [WNConv(n, 1, stride=2, name=f"conv_{i}")(s)
            for i, (n, s) in enumerate(zip(sizes, shifted))]
    h = min(o.shape[1] for o in outs)
    w = min(o.shape[2] for o in outs)
    return jnp.concatenate([o[:, :h, :w] for o in outs], axis=-1)


class BNSwishConv(nn.Module):
  """BN + Swish (+ nearest 2x upsampling for stride -1) + weight-normalised 3x3 conv."""

  features: int
  stride: int = 1
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = swish(batch_norm(train, self.bn_axis_name, "bn")(x))
    if self.stride == -1:
      x = upsample2x_nearest(x)
    return WNConv(self.features, 3, stride=abs(self.stride), name="conv")(x)


class InvertedResidual(nn.Module):
  """MBConv: BN, 1x1 expand + BN-Swish, depthwise kxk + BN-Swish, 1x1 project, BN.

  The convolutions here are plain (``weight_norm=False``, no bias) as in the reference.
  """

  features: int
  stride: int = 1
  expansion: int = 6
  kernel_size: int = 5
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    hidden = int(round(x.shape[-1] * self.expansion))
    if self.stride == -1:
      x = upsample2x_nearest(x)
    bn = lambda name: batch_norm(train, self.bn_axis_name, name)
    x = bn("bn_in")(x)
    x = WNConv(hidden, 1, use_bias=False, weight_norm=False, name="expand")(x)
    x = swish(bn("bn_expand")(x))
    x = WNConv(hidden, self.kernel_size, stride=abs(self.stride), use_bias=False,
               weight_norm=False, groups=hidden, name="depthwise")(x)
    x = swish(bn("bn_depthwise")(x))
    x = WNConv(self.features, 1, use_bias=False, weight_norm=False, name="project")(x)
    return bn("bn_out")(x)


class Cell(nn.Module):
  """Residual cell: ``skip(x) + 0.1 * SE(branch(x))``.

  Attributes:
    features: output channels.
    cell_type: ``normal_*``, ``down_*`` (stride 2) or ``up_*`` (2x upsampling).
    ops: the conv branch, names from ``ARCH_CELLS`` ("res_bnswish", "mconv_e6k5",
      "mconv_e3k5").
    use_se: squeeze-and-excitation at the end of the branch.
    bn_axis_name: axis for synchronised BatchNorm, or None.
  """

  features: int
  cell_type: str
  ops: Sequence[str]
  use_se: bool = True
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    stride = stride_for_cell_type(self.cell_type)
    if stride == 1:
      skip = x
    elif stride == 2:
      skip = FactorizedReduce(self.features, name="skip")(x)
    else:
      skip = WNConv(self.features, 1, use_bias=False, name="skip")(upsample2x_bilinear(x))
    s = x
    for i, op in enumerate(self.ops):
      st = stride if i == 0 else 1
      if op == "res_bnswish":
        s = BNSwishConv(self.features, st, self.bn_axis_name, name=f"op_{i}")(s, train)
      elif op in ("mconv_e6k5", "mconv_e3k5"):
        ex = 6 if op == "mconv_e6k5" else 3
        s = InvertedResidual(self.features, st, ex, 5, self.bn_axis_name, name=f"op_{i}")(s, train)
      else:
        raise ValueError(f"unknown cell op {op!r}")
    if self.use_se:
      s = SqueezeExcite(name="se")(s)
    return skip + 0.1 * s


class EncCombiner(nn.Module):
  """Encoder combiner: ``x_enc + conv1x1(x_dec)``."""

  features: int

  @nn.compact
  def __call__(self, x_enc: Array, x_dec: Array) -> Array:
    return x_enc + WNConv(self.features, 1, name="conv")(x_dec)


class InputSkipCombiner(nn.Module):
  """Input-pyramid combiner (``--progressive_input_vae input_skip``; the reference's
  ``InputSkipCombinerCell`` in layers/neural_operations.py): the running input pyramid
  ``p`` is downsampled by a stride-2 BN-Swish-3x3 conv, ``p' = BNSwishConv(p)``, and added
  to the encoder state; returns ``(x + p', p')``."""

  features: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, pyramid: Array, train: bool) -> Tuple[Array, Array]:
    pyramid = BNSwishConv(self.features, 2, self.bn_axis_name, name="conv")(pyramid, train)
    return x + pyramid, pyramid


class DecCombiner(nn.Module):
  """Decoder combiner: ``conv1x1(concat(x_dec, z))``."""

  features: int

  @nn.compact
  def __call__(self, x: Array, z: Array) -> Array:
    return WNConv(self.features, 1, name="conv")(jnp.concatenate([x, z], axis=-1))


# ----------------------------------------------------------------------------- IAF cells

class CellAR(nn.Module):
  """One autoregressive shift: ``z - mu(z)`` with a masked inverted-residual for ``mu``.

  Volume preserving (log-det 0). ``mirror`` reverses the autoregressive order.
  """

  mirror: bool = False
  expansion: int = 6
  kernel_size: int = 5

  @nn.compact
  def __call__(self, z: Array) -> Tuple[Array, Array]:
    num_z = z.shape[-1]
    hidden = int(round(num_z * self.expansion))
    h = WNConv(hidden, 3, use_bias=False, ar_mask=(True, self.mirror), name="conv_z")(z)
    h = nn.elu(h)
    h = WNConv(hidden, self.kernel_size, use_bias=False, groups=hidden,
               ar_mask=(False, self.mirror), name="conv_dw")(h)
    # 0.1 keeps mu near 0 at the start (reference ELUConv weight_init_coeff).
    mu = WNConv(num_z, 1, use_bias=True, ar_mask=(False, self.mirror), gain_init=0.1,
                name="mu")(nn.elu(h))
    new_z = z - mu
    return new_z, jnp.zeros_like(new_z)


class PairedCellAR(nn.Module):
  """Two ``CellAR`` with opposite orders; returns the new ``z`` and the summed log-det."""

  @nn.compact
  def __call__(self, z: Array) -> Tuple[Array, Array]:
    z, ld1 = CellAR(mirror=False, name="cell1")(z)
    z, ld2 = CellAR(mirror=True, name="cell2")(z)
    return z, ld1 + ld2
