"""The train step with the optimizer update written as optax writes it vs in place
(``optim.GuardedAdam``), side by side in one process on the same batch.

  python benchmarks/guarded_update_cpu.py [--config=configs/cld_cifar.py:smoke] \
      [--batch_size=2] [--repeats=10]

Both programs are the real jitted, donated train step of the config; they differ only
in how Adam + the skip guard + the EMA are written (the same numbers:
tests/test_train_state.py). Prints, for each: compile seconds, the median and best step
time over alternating runs, and how many donated state arrays XLA copies per step (with
their size).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.train_step import load_config  # noqa: E402
from lsgm_jax import optim, parallel, train  # noqa: E402


def copied_state(hlo: str) -> tuple[int, int]:
  """(arrays, bytes) of the entry computation's copies of donated state arrays."""
  entry = hlo[hlo.index("\nENTRY"):]
  shapes = re.findall(r"= f32\[([\d,]+)\]\S* copy\(%state", entry)
  return len(shapes), sum(4 * math.prod(int(d) for d in s.split(",")) for s in shapes)


def build(config_name: str, batch_size: int, in_place: bool):
  make = optim.make_optimizer
  if not in_place:  # the same optax transformation, through the generic path
    optim.make_optimizer = lambda *a: (lambda g: optax.GradientTransformation(
        g.init, g.update))(make(*a))
  try:
    config = load_config(config_name, [])
    config.training.batch_size = batch_size
    exp = train.Experiment(config, "/tmp/unused_benchmark_workdir")
    state = exp.init_fn(exp.rng)
  finally:
    optim.make_optimizer = make
  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
      {"x": rng.uniform(-1, 1, (batch_size,) + exp.data_info.shape).astype(np.float32),
       "label": np.zeros((batch_size,), np.int32)}, exp.mesh)
  t0 = time.perf_counter()
  step = exp.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return {"step": step, "state": state, "batch": batch, "compile_s": compile_s,
          "copies": copied_state(step.as_text()), "times": []}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/cld_cifar.py:smoke")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  runs = {"optax": build(args.config, args.batch_size, in_place=False),
          "in_place": build(args.config, args.batch_size, in_place=True)}
  for _ in range(args.repeats):
    for run in runs.values():
      t0 = time.perf_counter()
      run["state"], metrics = run["step"](run["state"], run["batch"])
      jax.block_until_ready(metrics)
      run["times"].append(time.perf_counter() - t0)
  print(f"{args.config} batch {args.batch_size} on {jax.devices()[0].device_kind}, "
        f"{args.repeats} alternating steps each")
  print("| update | compile s | step s median | step s best | state arrays copied per step |")
  print("|---|---:|---:|---:|---:|")
  for name, run in runs.items():
    n, size = run["copies"]
    print(f"| {name} | {run['compile_s']:.1f} | {np.median(run['times']):.3f} | "
          f"{min(run['times']):.3f} | {n} ({size / 2**30:.2f} GiB) |")


if __name__ == "__main__":
  main()
