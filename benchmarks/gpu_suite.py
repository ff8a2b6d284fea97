"""One part of the accelerator benchmark suite (run all parts with ``gpu_suite.sh``).

  python benchmarks/gpu_suite.py --part=train --dtype=bfloat16 --out=results.jsonl
  python benchmarks/gpu_suite.py --part=sample --dtype=float32 --nfe=150 --out=...

Parts:
- ``train``: the real jitted, sharded, donated train step of ``--config`` (default the
  paper's CLD-SGM CIFAR-10 model, ``configs/cld_cifar.py``: NCSN++ 107.6M parameters, HSM,
  EMA, clipping) at ``--batch`` (default 128, the paper's global batch) on random data of
  CIFAR-10's shape (the step's cost does not depend on pixel values);
- ``sample``: the config's sampler (SSCS for CLD) at ``--nfe`` network evaluations on
  ``--sample_batch`` images, random weights.

Each part compiles ahead of time (``jit(...).lower(...).compile()``, timed), counts the
program's model FLOPs on its jaxpr (``lsgm_jax.flops``; XLA's cost analysis is recorded
beside it but misses cuDNN convolutions), and then times steady-state calls. Several parts
started together compile in parallel (compilation is host work) and then take turns on
the accelerator: a part waits until every part of ``--barrier`` has compiled, then times
under an exclusive file lock, so no timing overlaps another part's compilation or timing.
One JSON line per part is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_step import load_config  # pylint: disable=wrong-import-position


def wait_for_barrier(barrier: str, expected: int, name: str, timeout_s: float) -> None:
  """Marks this part compiled and waits until ``expected`` parts have (or timeout)."""
  if not barrier:
    return
  os.makedirs(barrier, exist_ok=True)
  open(os.path.join(barrier, name), "w").close()
  deadline = time.time() + timeout_s
  while len(os.listdir(barrier)) < expected and time.time() < deadline:
    time.sleep(0.5)


class ExclusiveDevice:
  """A file lock held while timing, so parts never time at the same moment."""

  def __init__(self, path: str):
    self.path = path
    self.handle = None

  def __enter__(self):
    if self.path:
      self.handle = open(self.path, "a")
      fcntl.flock(self.handle, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    if self.handle is not None:
      fcntl.flock(self.handle, fcntl.LOCK_UN)
      self.handle.close()


def synthetic_batch(exp, batch_size: int):
  import jax
  import numpy as np
  from lsgm_jax import parallel
  local = batch_size // jax.process_count()
  rng = np.random.default_rng(0)
  local_batch = {"x": rng.uniform(-1, 1, (local,) + exp.data_info.shape).astype(np.float32),
                 "label": np.zeros((local,), np.int32)}
  return parallel.global_batch(local_batch, exp.mesh)


def run_part(args) -> dict:
  import jax
  from lsgm_jax import flops
  from lsgm_jax.experiment import Experiment

  overrides = list(args.set) + [f"training.compute_dtype={args.dtype}"]
  config = load_config(args.config, overrides)
  config.training.batch_size = args.batch
  if args.part == "sample":
    config.sampling.num_steps = args.nfe
    config.sampling.denoise = False  # NFE = num_steps exactly
  exp = Experiment(config, "/tmp/unused_benchmark_workdir")
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  result = {"part": args.part, "config": args.config, "params": exp.num_params,
            "compute_dtype": args.dtype, "device": f"{jax.device_count()} x {kind}",
            "jax": jax.__version__}

  t0 = time.perf_counter()
  state = exp.init_fn(exp.rng)
  jax.block_until_ready(state)
  result["init_s"] = round(time.perf_counter() - t0, 2)

  if args.part == "train":
    batch = synthetic_batch(exp, args.batch)
    t0 = time.perf_counter()
    lowered = exp.train_step.lower(state, batch)
    result["lower_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    program = lowered.compile()
    result["compile_s"] = round(time.perf_counter() - t0, 2)
    call = lambda s: program(s, batch)  # noqa: E731
    examples_per_call = args.batch
    result["batch"] = args.batch
  else:
    rng = jax.random.PRNGKey(1)
    num = args.sample_batch
    t0 = time.perf_counter()
    lowered = exp.sample_fn.lower(state, rng, num)
    result["lower_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    program = lowered.compile()
    result["compile_s"] = round(time.perf_counter() - t0, 2)
    call = lambda s: (s, program(s, rng))  # noqa: E731
    examples_per_call = num
    result.update(sample_batch=num, sampler=config.sampling.method, nfe=args.nfe)
  if args.part == "sample":
    flops_per_call = flops.jaxpr_flops(lambda s, r: exp.method.sample(s, r, num), state, rng)
  else:
    flops_per_call = flops.jaxpr_flops(exp.method.train_step, state, batch)
  xla_flops = flops.compiled_flops(program)
  result["xla_cost_analysis_gflops"] = None if xla_flops is None else round(xla_flops / 1e9, 1)
  result["gflops_per_call"] = None if flops_per_call is None else round(flops_per_call / 1e9, 1)

  wait_for_barrier(args.barrier, args.barrier_count, f"{args.part}_{args.dtype}",
                   args.barrier_timeout)
  with ExclusiveDevice(args.lock):
    for _ in range(args.warmup):
      state, out = call(state)
    jax.block_until_ready(out)
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      for _ in range(args.calls):
        state, out = call(state)
      jax.block_until_ready(out)
      times.append((time.perf_counter() - t0) / args.calls)
  if args.part == "sample":
    info = out[1]
    result["nfe_reported"] = float(info["nfe"]) if "nfe" in info else None
  best = min(times)
  median = sorted(times)[len(times) // 2]
  result["s_per_call_best"] = round(best, 4)
  result["s_per_call_median"] = round(median, 4)
  result["examples_per_s"] = round(examples_per_call / median, 1)
  if args.part == "train":
    result["steps_per_s"] = round(1.0 / median, 3)
  util = flops.utilisation(flops_per_call, 1.0 / median, jax.device_count(), kind, args.dtype)
  result["tflops_per_device"] = (None if util["tflops_per_device"] is None
                                 else round(util["tflops_per_device"], 3))
  result["mfu"] = None if util["mfu"] is None else round(util["mfu"], 4)
  result["peak_tflops"] = flops.peak_tflops(kind, args.dtype)
  result["arithmetic"] = flops.arithmetic(kind, args.dtype)
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("train", "sample"), required=True)
  parser.add_argument("--config", default="configs/cld_cifar.py")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--batch", type=int, default=128, help="global train batch")
  parser.add_argument("--sample_batch", type=int, default=128)
  parser.add_argument("--nfe", type=int, default=150)
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls")
  parser.add_argument("--calls", type=int, default=10, help="calls per timed repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--set", nargs="*", default=[], help="config overrides a.b=value")
  parser.add_argument("--out", default="", help="append the JSON line here")
  parser.add_argument("--lock", default="", help="file lock held while timing")
  parser.add_argument("--barrier", default="", help="folder: wait for all parts compiled")
  parser.add_argument("--barrier_count", type=int, default=1)
  parser.add_argument("--barrier_timeout", type=float, default=300.0)
  args = parser.parse_args(argv)
  try:
    result = run_part(args)
  except Exception as e:  # pylint: disable=broad-except  (one failed part must not hide others)
    traceback.print_exc()
    wait_for_barrier(args.barrier, args.barrier_count, f"{args.part}_{args.dtype}", 0)
    result = {"part": args.part, "compute_dtype": args.dtype,
              "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
  line = json.dumps(result)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  return result


if __name__ == "__main__":
  main()
