"""Convolution gradients inside a scanned loop on XLA:CPU: lax's VJP vs models/conv.py.

``model.scan_blocks`` runs residual blocks as one ``nn.scan``. Inside that ``while``
body XLA:CPU does not rewrite the two backward convolutions (input and kernel gradient)
into the NHWC x HWIO form its fast kernel needs, and runs them as naive loops.
``lsgm_jax.models.conv.conv_general_dilated`` (what the models use) writes them in that
form on CPU. This times the gradient of ``blocks`` 3x3 convolutions + ReLU, scanned and
unrolled, with each convolution, and checks the gradients agree.

  python benchmarks/scan_conv_cpu.py [--batch=8] [--size=32] [--channels=64] \
      [--blocks=4] [--repeats=5]
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

from lsgm_jax.models import conv  # noqa: E402

_DN = ("NHWC", "HWIO", "NHWC")


def _loss(conv_fn, scanned: bool):
  def block(h, w):
    return jax.nn.relu(conv_fn(h, w, (1, 1), "SAME", dimension_numbers=_DN))

  def loss(ws, x):
    if scanned:
      h = jax.lax.scan(lambda h, w: (block(h, w), None), x, ws)[0]
    else:
      h = x
      for i in range(ws.shape[0]):
        h = block(h, ws[i])
    return jnp.sum(h ** 2)
  return loss


def _time(fn, args, repeats: int) -> tuple[float, object]:
  out = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  flags = parser.parse_args()
  rng = np.random.default_rng(0)
  c = flags.channels
  ws = jnp.asarray(rng.normal(0, (9 * c) ** -0.5, (flags.blocks, 3, 3, c, c)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(flags.batch, flags.size, flags.size, c)), jnp.float32)
  print(f"device: {jax.devices()[0].device_kind} | grad of {flags.blocks} x (3x3 conv "
        f"{c}->{c} + ReLU) at {flags.batch}x{flags.size}x{flags.size}x{c}, median of "
        f"{flags.repeats}")
  results = {}
  for scanned in (True, False):
    for name, fn in (("lax", jax.lax.conv_general_dilated),
                     ("models.conv", conv.conv_general_dilated)):
      with conv.canonical_cpu_gradients():  # traced (on the first call) inside it
        grad = jax.jit(jax.grad(_loss(fn, scanned)))
        seconds, g = _time(grad, (ws, x), flags.repeats)
      results[scanned, name] = g
      layout = "scanned " if scanned else "unrolled"
      print(f"{layout} {name:12s} {seconds * 1e3:9.1f} ms")
  ref = results[False, "lax"]
  diff = max(float(jnp.max(jnp.abs(g - ref))) for g in results.values())
  print(f"max abs gradient difference to unrolled lax: {diff:.2e} "
        f"(gradient scale {float(jnp.max(jnp.abs(ref))):.2e})")


if __name__ == "__main__":
  main()
