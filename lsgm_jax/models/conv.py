"""A 2-D convolution whose gradient XLA:CPU runs at full speed inside loops.

XLA:CPU hands a convolution to its fast Eigen kernel only in the canonical form (NHWC
input, HWIO kernel, NHWC output). Outside loops it rewrites the two convolutions of the
backward pass (the input gradient: kernel flipped with in/out swapped; the kernel
gradient: batch and feature roles swapped) into that form with transposes, but inside a
``while`` body (``nn.scan`` over residual blocks, ``model.scan_blocks``) it leaves them
as they are and emits a naive loop: on this 2-core CPU the gradient of four scanned
3x3 convolutions at 8x32x32x64 took 6.7 s against 0.12 s unrolled
(BENCHMARKS.md, "Scanned blocks on XLA:CPU").

``conv_general_dilated`` is a drop-in for ``lax.conv_general_dilated`` (flax's
``nn.Conv(conv_general_dilated=...)``). For stride-1, undilated, ungrouped NHWC/HWIO
convolutions it runs the same forward convolution with a custom VJP that, on CPU,
writes both gradients as canonical convolutions with explicit transposes; on every
other platform (``lax.platform_dependent``) the gradient is JAX's own. The forward pass
and the parameters are unchanged everywhere.

A ``custom_vjp`` cannot be differentiated in forward mode (``jax.jvp``: the likelihood's
divergence), so the custom gradient is used only while ``canonical_cpu_gradients()`` is
active at trace time: the train step (``train_state.make_train_step``) traces its
``value_and_grad`` inside it; everywhere else the convolution is lax's.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Sequence

import jax
from jax import lax

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

_NHWC = ("NHWC", "HWIO", "NHWC")

_CANONICAL_GRADS = contextvars.ContextVar("canonical_cpu_conv_gradients", default=False)


@contextlib.contextmanager
def canonical_cpu_gradients(enabled: bool = True):
  """Within this context (at trace time), eligible convolutions get the CPU-friendly
  custom VJP (reverse mode only; no ``jax.jvp`` through them)."""
  token = _CANONICAL_GRADS.set(enabled)
  try:
    yield
  finally:
    _CANONICAL_GRADS.reset(token)


def _conv(x: Array, w: Array, pads: Pads, precision: Any) -> Array:
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _canonical_grads(pads: Pads, precision: Any, x: Array, w: Array, dy: Array
                     ) -> tuple[Array, Array]:
  """(dL/dx, dL/dw) of a stride-1 NHWC/HWIO convolution as two canonical ones."""
  (kh, kw) = w.shape[:2]
  (ph0, ph1), (pw0, pw1) = pads
  # dx = dy (*) w flipped in space with in/out swapped, padded to give back x's size.
  w_t = _flip_swap(w)
  dx = _conv(dy, w_t, ((kh - 1 - ph0, kh - 1 - ph1), (kw - 1 - pw0, kw - 1 - pw1)),
             precision)
  # dw[a, b, i, o] = sum_{n, y, x} x_pad[n, y + a, x + b, i] dy[n, y, x, o]: a
  # convolution with batch <-> feature roles swapped, window = dy's spatial size.
  lhs = x.transpose(3, 1, 2, 0)   # (I, H, W, N): "batch" I, "features" N
  rhs = dy.transpose(1, 2, 0, 3)  # (H', W', N, O)
  dw = _conv(lhs, rhs, pads, precision).transpose(1, 2, 0, 3)  # (kh, kw, I, O)
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _flip_swap(w: Array) -> Array:
  """HWIO kernel flipped in both spatial axes, input and output channels swapped."""
  return lax.rev(w, (0, 1)).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _stride1_conv(x: Array, w: Array, pads: Pads, precision: Any) -> Array:
  return _conv(x, w, pads, precision)


def _fwd(x, w, pads, precision):
  return _conv(x, w, pads, precision), (x, w)


def _bwd(pads, precision, residuals, dy):
  x, w = residuals

  def native(x, w, dy):
    _, vjp = jax.vjp(lambda a, b: _conv(a, b, pads, precision), x, w)
    return vjp(dy)

  return lax.platform_dependent(
      x, w, dy, cpu=functools.partial(_canonical_grads, pads, precision),
      default=native)


_stride1_conv.defvjp(_fwd, _bwd)


def _is_nhwc_hwio(dimension_numbers: Any) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1),
                                                         (0, 3, 1, 2))
  return tuple(dimension_numbers) == _NHWC


def _all_one(xs: Sequence[int] | None) -> bool:
  return xs is None or all(int(v) == 1 for v in xs)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> Array:
  """``lax.conv_general_dilated`` with a CPU-friendly gradient where it applies and
  ``canonical_cpu_gradients`` is active (module docstring); otherwise lax's."""
  fallback = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  if (not _CANONICAL_GRADS.get() or lhs.ndim != 4 or not _is_nhwc_hwio(dimension_numbers)
      or not _all_one(window_strides) or not _all_one(lhs_dilation)
      or not _all_one(rhs_dilation) or feature_group_count != 1
      or batch_group_count != 1 or preferred_element_type is not None):
    return fallback()
  kernel = rhs.shape[:2]
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], kernel, (1, 1), padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if any(not 0 <= p <= k - 1 for (lo, hi), k in zip(pads, kernel) for p in (lo, hi)):
    return fallback()
  return _stride1_conv(lhs, rhs, pads, precision)
