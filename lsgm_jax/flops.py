"""Achieved FLOP rates and model-FLOP utilisation (MFU) of compiled programs.

FLOPs per call are model FLOPs counted on the program's jaxpr (``jaxpr_flops``): 2 x the
multiply-adds of every convolution and matrix product, the backward pass included,
loops counted once per trip. They do not depend on the backend: XLA's own cost analysis
(``compiled_flops``) misses cuDNN convolutions on GPU (it reported 0.70 TFLOP for the
CLD CIFAR-10 step whose convolutions alone are 13.3 TFLOP) and counts a loop body once.
MFU divides the achieved rate by the chip's dense peak for
the arithmetic that the compute dtype actually runs on:

- ``bfloat16``: the bf16 tensor-core / MXU peak;
- ``float32``: on NVIDIA Ampere and later, JAX's default matmul precision runs float32
  convolutions and products on TF32 tensor cores, so the TF32 peak; on TPU the default
  precision runs them as single bf16 passes, so the bf16 peak. With
  ``jax_default_matmul_precision="highest"`` the plain FP32 peak applies (``fp32_highest``).

Peaks are the vendors' dense (no sparsity) datasheet figures in TFLOP/s per chip.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.extend

# device_kind (as jax reports it) -> {arithmetic: dense peak TFLOP/s per chip}
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 SXM / H200 SXM datasheets (dense).
    "NVIDIA H200": {"bfloat16": 989.4, "tf32": 494.7, "fp32_highest": 66.9},
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.4, "tf32": 494.7, "fp32_highest": 66.9},
    "NVIDIA H100 PCIe": {"bfloat16": 756.0, "tf32": 378.0, "fp32_highest": 51.2},
    # NVIDIA A100 SXM datasheet (dense).
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312.0, "tf32": 156.0, "fp32_highest": 19.5},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312.0, "tf32": 156.0, "fp32_highest": 19.5},
    "NVIDIA A100 80GB PCIe": {"bfloat16": 312.0, "tf32": 156.0, "fp32_highest": 19.5},
    "NVIDIA L4": {"bfloat16": 121.0, "tf32": 60.0, "fp32_highest": 30.3},
    # Google Cloud TPU system-architecture pages (bf16 per chip).
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5": {"bfloat16": 459.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
}


def arithmetic(device_kind: str, compute_dtype: str) -> str:
  """Which peak of ``PEAK_TFLOPS`` a compute dtype runs at under JAX's precision setting."""
  if compute_dtype == "bfloat16":
    return "bfloat16"
  precision = str(jax.config.jax_default_matmul_precision or "default").lower()
  if device_kind.startswith("TPU"):
    return "bfloat16" if precision in ("default", "bfloat16", "fastest") else "fp32_highest"
  return "fp32_highest" if precision in ("highest", "float32") else "tf32"


def peak_tflops(device_kind: str, compute_dtype: str) -> float | None:
  """Dense peak TFLOP/s of one chip for ``compute_dtype``, or None if unknown."""
  return PEAK_TFLOPS.get(device_kind, {}).get(arithmetic(device_kind, compute_dtype))


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled program (``jit(f).lower(...).compile()``), from XLA's
  cost analysis; None where the backend reports none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def utilisation(flops_per_call: float | None, calls_per_s: float, num_devices: int,
                device_kind: str, compute_dtype: str) -> dict[str, float | None]:
  """{"tflops_per_device": achieved, "mfu": achieved / peak (None if peak unknown)}."""
  if flops_per_call is None:
    return {"tflops_per_device": None, "mfu": None}
  achieved = flops_per_call * calls_per_s / num_devices / 1e12
  peak = peak_tflops(device_kind, compute_dtype)
  return {"tflops_per_device": achieved, "mfu": achieved / peak if peak else None}


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  contracted = math.prod(lhs[d] for d in lhs_contract)
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
  per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _subjaxprs(eqn):
  for value in eqn.params.values():
    values = value if isinstance(value, (list, tuple)) else (value,)
    for v in values:
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def count_jaxpr_flops(jaxpr) -> float:
  """2 x multiply-adds of the convolutions and matrix products in a jaxpr, nested ones
  included; a ``scan`` body counts ``length`` times, a ``cond`` its costliest branch, a
  ``while`` body once (its trip count is not static)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * count_jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    elif name == "cond":
      total += max(count_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      total += sum(count_jaxpr_flops(sub) for sub in _subjaxprs(eqn))
  return total


def jaxpr_flops(fn: Callable[..., Any], *args: Any) -> float:
  """Model FLOPs of one call ``fn(*args)`` (arrays or ShapeDtypeStructs), counted on its
  jaxpr; backend-independent, so the same number on CPU, GPU and TPU."""
  return count_jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
