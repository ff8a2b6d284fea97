"""FIR resampling on XLA: depthwise / dilated convolutions vs the forms the models use.

NCSN++ with ``fir=True`` (CLD-SGM, score_sde, LSGM CIFAR-10) resamples with StyleGAN2's
``upfirdn2d`` and a fused upsampling convolution. As convolutions, XLA's CPU backend runs
them poorly: a grouped (depthwise) convolution for the 4x4 FIR filter and an
``lhs_dilation`` convolution for the stride-2 transposed convolution. The models use
``lsgm_jax.models.layers.upfirdn2d`` (two 1-D passes of strided slices for separable
kernels) and ``lsgm_jax.models.fir.fir_upsample_conv`` (FIR upsampling, then an
ordinary convolution). This times forward + backward of each pair at the shapes of the
CIFAR-10 NCSN++ (batch 16) and checks they agree.

  python benchmarks/fir_resampling.py [--batch=16] [--repeats=5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lsgm_jax.models import fir  # noqa: E402

_DN = ("NHWC", "HWIO", "NHWC")


def _transposed_then_fir(x, w, kernel, factor=2):
  """The fused upsampling convolution as the reference writes it (dilated conv, FIR)."""
  ks = w.shape[0]
  t = jax.lax.conv_general_dilated(x, w, (1, 1), [(ks - 1, ks - 1)] * 2,
                                   lhs_dilation=(factor, factor), dimension_numbers=_DN)
  p = (kernel.shape[0] - factor) - (ks - 1)
  return fir.upfirdn2d_depthwise(t, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def median_grad_seconds(fn, *args, repeats: int) -> float:
  """Median seconds of one forward + backward of sum(fn(*args)^2)."""
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=tuple(range(len(args)))))
  jax.block_until_ready(grad(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(grad(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  flags = parser.parse_args()
  rng = np.random.default_rng(0)
  b = flags.batch
  up_k = fir.fir_kernel((1, 3, 3, 1), 4.0)
  down_k = fir.fir_kernel((1, 3, 3, 1), 1.0)
  x16 = jnp.asarray(rng.normal(size=(b, 16, 16, 256)), jnp.float32)
  x32 = jnp.asarray(rng.normal(size=(b, 32, 32, 128)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 256, 256)) * 0.02, jnp.float32)
  cases = [
      ("FIR upsample 16->32, C 256", (lambda x: fir.upfirdn2d_depthwise(x, up_k, 2, 1, (2, 1))),
       (lambda x: fir.upsample_2d(x)), (x16,)),
      ("FIR downsample 32->16, C 128", (lambda x: fir.upfirdn2d_depthwise(x, down_k, 1, 2, (1, 1))),
       (lambda x: fir.downsample_2d(x)), (x32,)),
      ("fused up conv 3x3 16->32, C 256", (lambda x, w: _transposed_then_fir(x, w, up_k)),
       (lambda x, w: fir.fir_upsample_conv(x, w, up_k, 2)), (x16, w)),
  ]
  print(f"device: {jax.devices()[0].device_kind}, batch {b}, forward + backward, median of "
        f"{flags.repeats}")
  print("| op | convolution form (ms) | model's form (ms) | speed-up | max abs diff |")
  print("|---|---:|---:|---:|---:|")
  for name, conv_form, model_form, args in cases:
    diff = float(jnp.max(jnp.abs(conv_form(*args) - model_form(*args))))
    t_conv = median_grad_seconds(conv_form, *args, repeats=flags.repeats)
    t_model = median_grad_seconds(model_form, *args, repeats=flags.repeats)
    print(f"| {name} | {t_conv * 1e3:.1f} | {t_model * 1e3:.1f} | {t_conv / t_model:.1f}x | "
          f"{diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
