"""Times the real jitted, sharded, donated train step of a config.

  python benchmarks/train_step.py --config=configs/sgm_toy.py [--batch_size=256] \
      [--steps=200] [--set training.compute_dtype=bfloat16 ...] [--synthetic]

Prints steps/s and examples/s after compilation and warm-up, with the device named.
The batch comes from the config's own data pipeline, assembled as in training.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(spec: str, overrides: list[str]):
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  for item in overrides:
    key, _, value = item.partition("=")
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    current = node[leaf]
    node[leaf] = type(current)(eval(value)) if isinstance(current, tuple) else type(current)(value)
  return config


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="configs/<file>.py[:variant]")
  parser.add_argument("--batch_size", type=int, default=0, help="global batch (0 = config's)")
  parser.add_argument("--steps", type=int, default=50, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--set", nargs="*", default=[], help="overrides a.b=value")
  parser.add_argument("--synthetic", action="store_true",
                      help="random data of the dataset's shape (for TFDS sets not prepared "
                      "on this machine); the step's cost does not depend on the values")
  args = parser.parse_args(argv)

  import jax
  from lsgm_jax import data, parallel, train
  from lsgm_jax.main import hide_accelerators_from_tensorflow
  hide_accelerators_from_tensorflow()

  config = load_config(args.config, args.set)
  if args.batch_size:
    config.training.batch_size = args.batch_size
  exp = train.Experiment(config, "/tmp/unused_benchmark_workdir")
  batch_size = int(config.training.batch_size)
  if args.synthetic:
    import numpy as np
    local = batch_size // jax.process_count()
    rng = np.random.default_rng(0)
    local_batch = {"x": rng.uniform(-1, 1, (local,) + exp.data_info.shape).astype(np.float32),
                   "label": np.zeros((local,), np.int32)}
  else:
    local_batch = next(data.make_train_iterator(
        config.data, global_batch_size=batch_size, seed=0,
        process_index=jax.process_index(), process_count=jax.process_count()))
  batch = parallel.global_batch(local_batch, exp.mesh)

  t0 = time.perf_counter()
  state = exp.init_fn(exp.rng)
  state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - t0
  device = jax.devices()[0]
  result = {
      "config": args.config, "params": exp.num_params, "batch": batch_size,
      "data": "synthetic" if args.synthetic else config.data.name,
      "device": f"{jax.device_count()} x {getattr(device, 'device_kind', device.platform)}",
      "compute_dtype": config.training.compute_dtype,
      "compile_s": round(compile_s, 2), "steps_per_s": round(args.steps / elapsed, 3),
      "examples_per_s": round(args.steps * batch_size / elapsed, 1),
  }
  print(" | ".join(f"{k}: {v}" for k, v in result.items()))
  return result


if __name__ == "__main__":
  main()
