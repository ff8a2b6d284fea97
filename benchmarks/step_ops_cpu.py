"""Forward + backward of the paper NCSN++'s building blocks in isolation, batch 8.

The pieces of the CLD-SGM CIFAR-10 step (3x3 convolutions at each width, GroupNorm,
swish, the NIN self-attention at 16x16) timed one at a time, as the gradient of
sum(op(x)^2), to compare with the same ops in another framework on the same machine
(BENCHMARKS.md, issue 15 item 8).

  python benchmarks/step_ops_cpu.py [--batch=8] [--repeats=7]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.fir_resampling import median_grad_seconds  # noqa: E402

_DN = ("NHWC", "HWIO", "NHWC")


def _time(name: str, fn, *args, repeats: int) -> None:
  print(f"{name:36s} {median_grad_seconds(fn, *args, repeats=repeats) * 1e3:8.1f} ms")


def _attention(x, w):
  """NIN q, k, v projections, softmax over positions, output projection, residual."""
  b, h, wd, c = x.shape
  seq = x.reshape(b, h * wd, c)
  q, k, v = seq @ w[0], seq @ w[1], seq @ w[2]
  a = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) * c ** -0.5, axis=-1)
  return (jnp.einsum("bij,bjc->bic", a, v) @ w[3]).reshape(x.shape) + x


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=7)
  flags = parser.parse_args()
  rng = np.random.default_rng(0)
  b, rep = flags.batch, flags.repeats

  def normal(*shape, scale=1.0):
    return jnp.asarray(rng.normal(0, scale, shape), jnp.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)

  print(f"device: {jax.devices()[0].device_kind} | batch {b} | median of {rep}, fwd + bwd")
  x32 = normal(b, 32, 32, 128)
  _time("conv3x3 128->128 at 32x32", conv, x32, normal(3, 3, 128, 128, scale=0.03), repeats=rep)
  for size in (16, 8):
    _time(f"conv3x3 256->256 at {size}x{size}", conv, normal(b, size, size, 256),
          normal(3, 3, 256, 256, scale=0.02), repeats=rep)
  norm = nn.GroupNorm(num_groups=32)
  params = norm.init(jax.random.key(0), x32)
  _time("GroupNorm(32) at 32x32x128", lambda x, p: norm.apply(p, x), x32, params, repeats=rep)
  _time("swish at 32x32x128", jax.nn.swish, x32, repeats=rep)
  _time("attention at 16x16x256", _attention, normal(b, 16, 16, 256),
        normal(4, 256, 256, scale=0.06), repeats=rep)


if __name__ == "__main__":
  main()
