"""FIR resampling with StyleGAN2's ``upfirdn2d`` semantics (NCSN++ with ``fir=True``).

NCSN++ (score_sde, CLD-SGM, LSGM) resamples with the 1,3,3,1 filter: ``upsample_2d``,
``downsample_2d`` and the fused upsampling convolution ``fir_upsample_conv`` behind
``lsgm_jax.models.layers.Conv2d(up=True)``. Written the way XLA runs them fast: a
separable filter as two 1-D passes of strided slices, the fused convolution as FIR
upsampling then an ordinary convolution. The grouped / dilated convolutions of the
direct form (kept as ``upfirdn2d_depthwise``) are 15-60x slower on XLA's CPU backend
(``benchmarks/fir_resampling.py``); the numbers are the same (tests/test_models.py).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def fir_kernel(k: Sequence[float], gain: float) -> np.ndarray:
  """Separable 1-D FIR taps -> normalised 2-D kernel times ``gain`` (StyleGAN2 setup)."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  k = k / np.sum(k)
  return (k * gain).astype(np.float32)


def _separable_taps(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """``(a, b)`` with ``kernel == outer(a, b)`` when the 2-D kernel has rank one, else None."""
  u, s, vt = np.linalg.svd(np.asarray(kernel, np.float64))
  if len(s) > 1 and s[1] > 1e-7 * s[0]:
    return None
  root = np.sqrt(s[0])
  return (u[:, 0] * root).astype(np.float32), (vt[0] * root).astype(np.float32)


def _upfirdn1d(x: Array, taps: np.ndarray, up: int, down: int, pad: tuple[int, int],
               axis: int) -> Array:
  """``upfirdn`` along one axis as a weighted sum of strided slices (no convolution).

  Zero-insert (``up - 1`` zeros after each sample), pad, correlate with the flipped
  taps, keep every ``down``-th output: the same numbers as the depthwise convolution.
  Elementwise work XLA fuses into one loop; on CPU this is 15-60x faster than the
  grouped convolution (``benchmarks/fir_resampling.py``).
  """
  n = x.shape[axis]
  if up > 1:
    x = jnp.stack([x] + [jnp.zeros_like(x)] * (up - 1), axis=axis + 1)
    x = x.reshape(x.shape[:axis] + (n * up,) + x.shape[axis + 2:])
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (pad[0], pad[1], 0)  # negative pads crop, as in the convolution
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
  flipped = np.asarray(taps, np.float32)[::-1]
  count = (x.shape[axis] - len(flipped)) // down + 1
  out = None
  for j, w in enumerate(flipped):
    index = [slice(None)] * x.ndim
    index[axis] = slice(j, j + (count - 1) * down + 1, down)
    term = x[tuple(index)] * jnp.asarray(w, x.dtype)
    out = term if out is None else out + term
  return out


def upfirdn2d(x: Array, kernel: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Array:
  """StyleGAN2 ``upfirdn2d`` on NHWC: zero-insert upsample, pad, FIR filter, subsample.

  A separable (rank-one) kernel, as every FIR kernel built from 1-D taps, runs as two
  1-D passes of strided slices (``_upfirdn1d``); any other kernel as one depthwise
  ``conv_general_dilated``, where ``lhs_dilation`` inserts the zeros (``up - 1`` after
  each sample, hence the extra ``up - 1`` trailing pad) and the kernel is flipped
  because ``upfirdn2d`` convolves while XLA correlates. Both give the same numbers.

  Args:
    x: ``[B, H, W, C]``.
    kernel: 2-D FIR kernel ``[kh, kw]``.
    up: upsampling factor.
    down: downsampling factor.
    pad: (before, after) padding applied to both spatial axes after upsampling.

  Returns:
    ``[B, (H*up + pad0 + pad1 - kh) // down + 1, ..., C]`` in ``x.dtype``.
  """
  taps = _separable_taps(kernel)
  if taps is not None:
    x = _upfirdn1d(x, taps[0], up, down, pad, axis=1)
    return _upfirdn1d(x, taps[1], up, down, pad, axis=2)
  return upfirdn2d_depthwise(x, kernel, up, down, pad)


def upfirdn2d_depthwise(x: Array, kernel: np.ndarray, up: int = 1, down: int = 1,
                        pad: tuple[int, int] = (0, 0)) -> Array:
  """``upfirdn2d`` as one depthwise convolution (any kernel; slow on XLA's CPU backend)."""
  c = x.shape[-1]
  k = jnp.asarray(kernel[::-1, ::-1], dtype=x.dtype)
  k = jnp.tile(k[:, :, None, None], (1, 1, 1, c))
  padding = [(pad[0], pad[1] + up - 1)] * 2
  return jax.lax.conv_general_dilated(
      x, k, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample_2d(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
  """FIR upsampling by ``factor`` (StyleGAN2 ``upsample_2d``). ``[B,H,W,C] -> [B,fH,fW,C]``."""
  kernel = fir_kernel(k, factor ** 2)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
  """FIR downsampling by ``factor`` (StyleGAN2 ``downsample_2d``).

  ``[B,H,W,C] -> [B,H/f,W/f,C]``.
  """
  kernel = fir_kernel(k, 1.0)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling. ``[B,H,W,C] -> [B,fH,fW,C]``."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Average pooling by ``factor``. ``[B,H,W,C] -> [B,H/f,W/f,C]``."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def fir_upsample_conv(x: Array, w: Array, kernel: np.ndarray, factor: int) -> Array:
  """StyleGAN2's fused upsampling convolution: a stride-``factor`` transposed convolution
  with ``w`` (the correlation of the zero-inserted input with full padding), then the
  FIR filter ``kernel`` with pads ``((p + 1) // 2 + factor - 1, p // 2 + 1)``,
  ``p = (kh - factor) - (k - 1)``.

  Computed in the other order, which is the same linear map (full convolutions
  commute): the FIR upsampling of ``x`` with full padding, then an ordinary VALID
  correlation with ``w`` over the window that the fused form's crop selects. XLA's CPU
  convolution with ``lhs_dilation`` is ~30x slower than an ordinary one
  (``benchmarks/fir_resampling.py``); this form has none.
  """
  ks, kl = w.shape[0], kernel.shape[0]
  n = x.shape[1]
  p = (kl - factor) - (ks - 1)
  p0, p1 = (p + 1) // 2 + factor - 1, p // 2 + 1
  # v: full FIR upsampling, length (n - 1) * factor + kl per axis.
  v = upfirdn2d(x, kernel, up=factor, pad=(kl - 1, kl - factor))
  fused_len = (n - 1) * factor + ks  # the transposed convolution's length
  out_len = fused_len + p0 + p1 - kl + 1
  start = (kl - 1) - (ks - 1) - p0  # y[q] = sum_a w[a] v[q + a + start]
  stop = start + out_len + ks - 1
  crop = (-start, stop - v.shape[1], 0)  # pad (or crop, when negative) to the window
  v = jax.lax.pad(v, jnp.zeros((), v.dtype), [(0, 0, 0), crop, crop, (0, 0, 0)])
  return jax.lax.conv_general_dilated(v, w, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
