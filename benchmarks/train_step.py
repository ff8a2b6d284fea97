"""Times the real jitted, sharded, donated train step of a config.

  python benchmarks/train_step.py --config=configs/sgm_toy.py [--batch_size=256] \
      [--steps=200] [--set training.compute_dtype=bfloat16 ...] [--synthetic] \
      [--cache_dir=DIR]

Prints steps/s and examples/s after compilation and warm-up, with the device named, and
the start-up in its parts for the state initialisation (``init_*``) and the train step
(``step_*``): ``*_lower_s`` (tracing and lowering to StableHLO), ``*_compile_s`` (XLA's
compile, or the persistent cache's load) and ``*_run_s`` (the first execution), each also
as ``*_cpu_s`` (CPU seconds of this process, all threads: on shared cores the wall time
mostly measures the neighbours); ``compile_s`` / ``compile_cpu_s`` are lowering plus
compiling of both programs, ``startup_s`` everything up to the first step's result.
``hlo_ops`` / ``xla_ops`` count the operations of the lowered StableHLO and of XLA's
optimised HLO. ``--steps=0 --warmup=0`` stops after the first step, ``--compile_only``
before it. The batch comes from the config's own data pipeline, assembled as in
training.

``--overlapped`` times start-up as ``--mode=train`` does it (the step compiled on a thread
while the state is initialised, ``Experiment.compile_train_step_in_background``):
``compiled_s`` is the wall time until both the state and the compiled step exist,
``startup_s`` until the first step's result.

``--cache_dir=DIR`` measures the persistent compilation cache (lsgm_jax/compile_cache.py):
the benchmark runs twice in fresh processes on a new, empty cache under DIR, first cold
(compiling and writing), then warm (reading), and prints both, with the number of
programs each run wrote to / read from the cache (JAX's own log, kept as
``<cache>/{cold,warm}.log``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
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
    if isinstance(current, bool):  # bool("False") is True
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"--set {item}: expected true or false")
      node[leaf] = value.lower() in ("true", "1")
    elif isinstance(current, tuple):
      node[leaf] = type(current)(eval(value))
    else:
      node[leaf] = type(current)(value)
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
  parser.add_argument("--compile_only", action="store_true",
                      help="stop after compiling the train step (no step is run)")
  parser.add_argument("--overlapped", action="store_true",
                      help="start-up as --mode=train does it: the step compiled on a thread "
                      "while the state is initialised (reports startup_s only)")
  parser.add_argument("--cache_dir", default="",
                      help="run cold then warm on a fresh persistent compilation cache here")
  parser.add_argument("--cache_run", default="", help=argparse.SUPPRESS)  # one child run
  args = parser.parse_args(argv)
  if args.overlapped and (args.cache_dir or args.steps != 50 or args.warmup != 3):
    parser.error("--overlapped times the start-up only: without --cache_dir, --steps, "
                 "--warmup")
  if args.cache_dir:
    return _cold_and_warm(args, sys.argv[1:] if argv is None else list(argv))

  import jax
  if args.cache_run:  # before anything compiles
    jax.config.update("jax_compilation_cache_dir", args.cache_run)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
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

  # Start-up, in its parts: tracing + lowering to StableHLO (Python), XLA's compile (or
  # the persistent cache's load), and the first execution; each in wall seconds and in
  # CPU seconds of this process (all threads): on shared cores the wall time mostly
  # measures the neighbours.
  clock = lambda: (time.perf_counter(), time.process_time())
  if args.overlapped:
    start = clock()
    compiling = exp.compile_train_step_in_background(batch_size)
    state = exp.init_fn(exp.rng)
    jax.block_until_ready(state)
    init_done = clock()
    _, step, _ = compiling.result(state, batch)
    ready = clock()
    if not args.compile_only:
      jax.block_until_ready(step(state, batch))
    end = clock()
    result = {"config": args.config, "params": exp.num_params, "batch": batch_size,
              "startup": "overlapped (--mode=train)",
              "init_done_s": round(init_done[0] - start[0], 2),
              "compiled_s": round(ready[0] - start[0], 2),
              "compiled_cpu_s": round(ready[1] - start[1], 2),
              "startup_s": round(end[0] - start[0], 2),
              "startup_cpu_s": round(end[1] - start[1], 2)}
    print(" | ".join(f"{k}: {v}" for k, v in result.items()))
    return result
  spans = {}

  def span(name, start):
    end = clock()
    spans[name] = (end[0] - start[0], end[1] - start[1])
    return end

  t = start = clock()
  lowered_init = exp.init_fn.lower(exp.rng)
  t = span("init_lower", t)
  init = lowered_init.compile()
  t = span("init_compile", t)
  state = init(exp.rng)
  jax.block_until_ready(state)
  t = span("init_run", t)
  lowered_step = exp.train_step.lower(state, batch)
  t = span("step_lower", t)
  step = lowered_step.compile()
  t = span("step_compile", t)
  metrics = None
  if not args.compile_only:
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  t = span("step_run", t)
  spans["startup"] = (t[0] - start[0], t[1] - start[1])
  hlo_ops = {"init": _count_ops(lowered_init.as_text()),
             "step": _count_ops(lowered_step.as_text())}
  xla_ops = {"init": _count_ops(init.as_text()), "step": _count_ops(step.as_text())}
  exp.train_step = step
  if args.compile_only:
    args.warmup = args.steps = 0
  for _ in range(args.warmup):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  elapsed = max(time.perf_counter() - t0, 1e-9)
  device = jax.devices()[0]
  result = {
      "config": args.config, "params": exp.num_params, "batch": batch_size,
      "data": "synthetic" if args.synthetic else config.data.name,
      "device": f"{jax.device_count()} x {getattr(device, 'device_kind', device.platform)}",
      "compute_dtype": config.training.compute_dtype,
      # trace + XLA compile of both programs (no execution): the compile time
      "compile_s": round(sum(spans[k][0] for k in ("init_lower", "init_compile",
                                                   "step_lower", "step_compile")), 2),
      "compile_cpu_s": round(sum(spans[k][1] for k in ("init_lower", "init_compile",
                                                       "step_lower", "step_compile")), 2),
      **{f"{k}_s": round(v[0], 2) for k, v in spans.items()},
      **{f"{k}_cpu_s": round(v[1], 2) for k, v in spans.items()},
      "hlo_ops": hlo_ops, "xla_ops": xla_ops,
      "steps_per_s": round(args.steps / elapsed, 3),
      "examples_per_s": round(args.steps * batch_size / elapsed, 1),
  }
  print(" | ".join(f"{k}: {v}" for k, v in result.items()))
  if args.cache_run:
    print("RESULT " + json.dumps(result))
  return result


def _count_ops(text: str | None) -> int:
  """Instructions in a program's text (StableHLO or HLO: lines that assign a value; a
  scanned run's body counts once). -1 when the text is not available."""
  if not text:
    return -1
  return sum(1 for line in text.splitlines() if " = " in line)


def _cold_and_warm(args: argparse.Namespace, argv: list[str]) -> dict:
  """Two fresh processes on one new cache directory: cold (writes), then warm (reads)."""
  os.makedirs(args.cache_dir, exist_ok=True)
  cache = tempfile.mkdtemp(prefix="train_step_", dir=args.cache_dir)
  child = [a for a in argv if not a.startswith("--cache_dir")]
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  # JAX logs every persistent-cache read and write at DEBUG level in these two modules.
  env["JAX_DEBUG_LOG_MODULES"] = "jax._src.compiler,jax._src.compilation_cache"
  runs = {}
  for name in ("cold", "warm"):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *child,
                          f"--cache_run={cache}"], env=env, capture_output=True, text=True,
                         check=False)
    with open(os.path.join(cache, f"{name}.log"), "w") as f:  # the cache's own account
      f.write(out.stderr)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
      sys.exit(f"{name} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    runs[name] = json.loads(lines[-1][len("RESULT "):])
    runs[name]["cache_hits"] = out.stderr.count("Persistent compilation cache hit")
    runs[name]["cache_writes"] = sum("to persistent compilation cache with key" in line
                                     for line in out.stderr.splitlines())
  result = dict(runs["warm"], cache_dir=cache)
  for key in runs["warm"]:
    if key.endswith("_s") or key.startswith("cache_"):
      result[key] = {"cold": runs["cold"][key], "warm": runs["warm"][key]}
  result["steps_per_s"] = {"cold": runs["cold"]["steps_per_s"], "warm": runs["warm"]["steps_per_s"]}
  result.pop("examples_per_s")
  print(" | ".join(f"{k}: {v}" for k, v in result.items()))
  return result


if __name__ == "__main__":
  main()
