"""The one training loop for every family: mesh, sharded jit step, checkpoints, logging,
preemption; plus evaluation and sampling from a checkpoint.

Resume order (``train``): this workdir's newest readable checkpoint (an unreadable one is
moved aside to ``<step>.damaged`` and the next older tried), else a fresh init from
``config.seed`` warm-started from the earlier stage's checkpoint when the family has one
(docs/ARCHITECTURE.md, "The training loop"). The data iterator restarts at the saved position, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from lsgm_jax import checkpoint, console, data, flops, parallel, signals
from lsgm_jax.evaluation import distances, sample_images, sample_quality
from lsgm_jax.experiment import BackgroundCompile, Experiment  # re-exported: train.Experiment
from lsgm_jax.train_state import TrainState
from lsgm_jax.workdir_lock import WorkdirLock


class SkipLimitError(RuntimeError):
  """Too many consecutive steps were skipped by the guard."""


class Preemption:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a flag read at the next step boundary (no
  host sync); a second Ctrl-C aborts at once. Installed before anything is built, so a
  signal during start-up or compilation ends the run with exit 0 (nothing to save yet)
  instead of the default exit 143, once the train step's compile, which runs from
  start-up on, is done.

  With several processes, jax's own preemption service (started by
  ``jax.distributed.initialize``) makes every process agree on the step at which to
  stop, so the signal handlers are left to it.
  """

  def __init__(self):
    self.requested = signals.received()  # a signal during main's imports
    self._previous: dict[int, Any] = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
    logging.warning("%s received: checkpointing at the next step boundary%s", name, again)
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore_handler(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


def _host_metrics(buffer: list[dict[str, jax.Array]]) -> list[dict[str, float]]:
  """Fetches buffered step metrics in one transfer."""
  fetched = jax.device_get(buffer)
  return [{k: float(v) for k, v in m.items()} for m in fetched]


def _skip_limit_message(step: int, metrics: dict[str, float], config) -> str:
  terms = {k: v for k, v in metrics.items() if k == "loss" or k.startswith("loss/")}
  bad = [k for k, v in terms.items() if not np.isfinite(v)]
  culprit = (f"non-finite loss term {bad[-1]!r}" if bad else
             "non-finite grad norm" if not np.isfinite(metrics["grad_norm"]) else
             f"grad norm {metrics['grad_norm']:.4g} >= training.skip_threshold="
             f"{config.training.skip_threshold}")
  shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(terms.items()))
  return (f"stopping: {int(metrics['consecutive_skips'])} consecutive steps skipped, the "
          f"last at step {step} ({culprit}; {shown}); lower the learning rate, raise "
          "training.skip_threshold or check the data")


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> TrainState:
  """Trains (or resumes) the configured method in ``workdir``; returns the final state.

  ``devices`` restricts the mesh to these devices (default: all of the job's devices).
  Process 0 holds the workdir's lock for the whole run: a second trainer on the same
  workdir stops with ``WorkdirLockedError`` before touching anything.
  """
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  with lock if lock is not None else contextlib.nullcontext():
    return _train(config, workdir, devices, lock)


class PreemptedDuringStartup(Exception):
  """A SIGTERM / Ctrl-C arrived before the first step: nothing to save."""


def _train(config: ml_collections.ConfigDict, workdir: str, devices,
           lock: WorkdirLock | None) -> TrainState | None:
  preemption = Preemption()  # first: a signal during start-up must not kill the run
  try:
    return _train_loop(config, workdir, devices, lock, preemption)
  except PreemptedDuringStartup:
    logging.warning("preempted during start-up: nothing new to save, exiting")
    return None
  finally:
    preemption.restore_handler()


def _check_not_preempted(preemption: Preemption) -> None:
  if jax.process_count() == 1 and preemption.requested:
    raise PreemptedDuringStartup()


def _resume_position(meta: dict[str, Any], start_step: int, training) -> int:
  """The data position to resume at; refuses another batch size unless allowed."""
  position = int(meta.get("data_position", start_step))
  saved = meta.get("batch_size")
  batch_size = int(training.batch_size)
  if saved is None or int(saved) == batch_size:
    return position
  if not bool(training.allow_batch_size_change):
    raise ValueError(
        f"this workdir was trained with training.batch_size={saved} (data position "
        f"{position} batches) and this run has {batch_size}: resume with the same batch "
        "size, or pass --config.training.allow_batch_size_change=True to continue at the "
        "same number of examples seen")
  converted = position * int(saved) // batch_size
  logging.warning("training.batch_size changed %s -> %d: data position %d -> %d batches "
                  "(same examples seen)", saved, batch_size, position, converted)
  return converted


def _train_loop(config: ml_collections.ConfigDict, workdir: str, devices,
                lock: WorkdirLock | None, preemption: Preemption) -> TrainState:
  console.quiet_libraries()
  exp = Experiment(config, workdir, devices)
  training = config.training
  exp.check_batch_size(int(training.batch_size), "training.batch_size")
  parallel.log_process_layout(exp.mesh)

  is_main = jax.process_index() == 0
  # Synchronous writes: clu's background writer thread can call tf.summary while the main
  # thread is still lazily importing TensorFlow (tf 2.21: "'LazyModule' object is not
  # callable", the scalar is lost). TensorBoard only: the console gets its own lines.
  writer = (metric_writers.SummaryWriter(workdir) if is_main
            else metric_writers.MultiWriter([]))
  if is_main:
    writer.write_hparams(_flatten(config.to_dict()))
    console.write_config_json(config, workdir)
  _check_not_preempted(preemption)
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint)
  # The step compiles on a thread while the state is initialised or restored (not for a
  # run already at num_train_steps). An error or a signal during start-up is reported
  # once that compile is done: no thread is left inside XLA while the process exits.
  # A missing dataset or earlier-stage checkpoint: its one line now, not after a compile.
  data.check_train_data(config.data)
  latest = checkpointer.latest_step()
  if latest is None:
    exp.method.check_warm_start()
  compiling = (exp.compile_train_step_in_background(int(training.batch_size))
               if latest is None or latest < int(training.num_train_steps) else None)
  aborted = False
  try:
    state, meta = exp.init_or_restore(checkpointer)
    start_step = int(jax.device_get(state.step))
    data_position = _resume_position(meta, start_step, training)
    if is_main:
      info = exp.data_info
      for line in console.banner(
          "train", config, num_params=exp.num_params, mesh=exp.mesh, workdir=workdir,
          resumed_from=start_step if meta else None,
          data_description=(f"{config.data.name} {tuple(info.shape)}, global batch "
                            f"{int(training.batch_size)}")):
        logging.info("%s", line)
    writer.write_scalars(start_step, {"num_params": exp.num_params})
    _check_not_preempted(preemption)
    return _run_steps(exp, state, start_step, data_position, checkpointer, writer,
                      preemption, lock, compiling)
  except KeyboardInterrupt:  # a second Ctrl-C: at once, without waiting for the compile
    aborted = True
    raise
  finally:
    try:
      if compiling is not None and not aborted:
        compiling.wait()
    finally:
      checkpointer.close()
      writer.flush()


def _run_steps(exp: Experiment, state: TrainState, start_step: int, data_position: int,
               checkpointer: checkpoint.Checkpointer, writer, preemption: Preemption,
               lock: WorkdirLock | None, compiling: BackgroundCompile | None) -> TrainState:
  config, workdir = exp.config, exp.workdir
  training = config.training
  total = int(training.num_train_steps)
  train_iter = data.make_train_iterator(
      config.data, global_batch_size=int(training.batch_size), seed=config.seed,
      start_position=data_position, process_index=jax.process_index(),
      process_count=jax.process_count())
  check_every = max(1, min(int(training.log_every), int(training.max_consecutive_skips)))
  buffer: list[dict[str, jax.Array]] = []
  log_buffer: collections.deque = collections.deque()

  def save(step: int) -> None:
    if lock is not None:
      lock.renew()
    checkpointer.save(step, state, {
        "data_position": step - start_step + data_position, "fingerprint": exp.fingerprint,
        "batch_size": int(training.batch_size), "config": config.to_json_best_effort()})

  step = start_step
  if step >= total:
    return state
  # Compiled ahead of time (on a thread since start-up): the compile time is logged, and
  # the program's jaxpr gives the model FLOPs per step for TFLOP/s and MFU (lsgm_jax.flops).
  batch = parallel.global_batch(next(train_iter), exp.mesh)
  if compiling is None:  # a finished run restored an older checkpoint (newer damaged)
    compiling = exp.compile_train_step_in_background(int(training.batch_size))
  traced, train_step, compile_s = compiling.result(state, batch)
  flops_per_step = flops.count_jaxpr_flops(traced.jaxpr.jaxpr) or None
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  peak = flops.peak_tflops(kind, training.compute_dtype)
  logging.info("compiled the train step in %.1f s (%s per step)", compile_s,
               console.human_flops(flops_per_step) if flops_per_step else "FLOPs unknown")
  _check_not_preempted(preemption)
  progress = console.Progress(step, total)
  while True:
    state, metrics = train_step(state, batch)
    step += 1
    buffer.append(metrics)

    if step % check_every == 0 or step == total:
      host = _host_metrics(buffer)
      buffer = []
      log_buffer.extend(host)
      last = host[-1]
      limit = int(training.max_consecutive_skips)
      for offset, m in enumerate(host):  # every step of the window, not only the last
        if m["consecutive_skips"] >= limit:
          raise SkipLimitError(_skip_limit_message(step - len(host) + 1 + offset, m, config))
      if step % int(training.log_every) == 0 or step == total:
        means = {k: float(np.mean([m[k] for m in log_buffer]))
                 for k in log_buffer[0] if k not in ("num_skipped", "consecutive_skips")}
        means["num_skipped"] = last["num_skipped"]
        line, rates = progress.line(step, means, flops_per_step=flops_per_step,
                                    num_devices=jax.device_count(), peak_tflops=peak)
        if jax.process_index() == 0:
          logging.info("%s", line)
        writer.write_scalars(step, {f"train/{k}": v for k, v in {**means, **rates}.items()})
        log_buffer.clear()

    if int(training.eval_every) and step % int(training.eval_every) == 0:
      metrics_eval = evaluate_state(exp, state)
      writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics_eval.items()})
    if int(config.eval.fid_every) and step % int(config.eval.fid_every) == 0:
      quality = sample_quality.evaluate(exp, state, workdir, step, resumable=False,
                                        num_samples=int(config.eval.fid_train_num_samples))
      writer.write_scalars(step, {f"eval/{k}": v for k, v in quality.items()})
    if int(training.sample_every) and step % int(training.sample_every) == 0:
      write_samples(exp, state, os.path.join(workdir, "samples", f"step_{step}"))

    if preemption.reached(step):
      logging.warning("preempted: saving step %d and exiting", step)
      save(step)
      return state
    if checkpointer.should_save(step):
      save(step)
    if step >= total:
      break
    batch = parallel.global_batch(next(train_iter), exp.mesh)
  if checkpointer.latest_step() != step:
    save(step)
  return state


def evaluate_state(exp: Experiment, state: TrainState) -> dict[str, float]:
  """One pass over the held-out split; per-example terms averaged over real examples."""
  ev = exp.config.eval
  exp.check_batch_size(int(ev.batch_size), "eval.batch_size")
  iterator = data.make_eval_iterator(
      exp.config.data, global_batch_size=int(ev.batch_size),
      process_index=jax.process_index(), process_count=jax.process_count())
  rng = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 1_000_003)
  totals: dict[str, float] = collections.defaultdict(float)
  for i, local in enumerate(iterator):
    if int(ev.num_batches) and i >= int(ev.num_batches):
      break
    sums = exp.eval_step(state, parallel.global_batch(local, exp.mesh),
                         jax.random.fold_in(rng, i))
    for k, v in jax.device_get(sums).items():
      totals[k] += float(v)
  count = totals.pop("count", 0.0)
  if count == 0:
    raise ValueError(f"the eval split of {exp.config.data.name!r} yielded no examples")
  results = {k: v / count for k, v in totals.items()}
  if exp.data_info.is_2d:
    results.update(sample_distances(exp, state))
  return results


def sample_distances(exp: Experiment, state: TrainState, num: int = 2000
                     ) -> dict[str, float]:
  """2-D data: MMD and sliced Wasserstein of samples vs held-out data, next to the same
  distances between two disjoint held-out draws (what a perfect model would score)."""
  held_out = next(data.make_eval_iterator(exp.config.data, global_batch_size=2 * num))["x"]
  reference, other = held_out[:num], held_out[num:]
  samples, info = generate_samples(exp, state, num, exp.config.seed)
  return {
      "mmd_samples": distances.mmd_rbf(samples, reference),
      "mmd_data_vs_data": distances.mmd_rbf(other, reference),
      "swd_samples": distances.sliced_wasserstein(samples, reference),
      "swd_data_vs_data": distances.sliced_wasserstein(other, reference),
      "sample_nfe": info["nfe"],
  }


def evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None,
             output_dir: str | None = None) -> dict[str, float]:
  """``--mode=eval``: metrics of the latest checkpoint, to JSON and TensorBoard."""
  console.quiet_libraries()
  exp = Experiment(config, workdir, devices)
  state, step, _ = exp.restore_for_inference()
  _inference_banner(exp, "eval", step)
  results = evaluate_state(exp, state)
  if config.eval.fid:  # labelled keys: fid50k, inception_score50k, kid50k, ...
    results.update(sample_quality.evaluate(exp, state, output_dir or workdir, step))
  if jax.process_index() == 0:
    out = output_dir or workdir
    os.makedirs(out, exist_ok=True) if "://" not in out else None
    path = os.path.join(out, f"eval_step_{step}.json")
    with open(path, "w") as f:
      json.dump({"step": step, **results}, f, indent=2)
    writer = metric_writers.SummaryWriter(os.path.join(out, "eval"))
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    writer.flush()
    shown = ", ".join(f"{k} {v:.5g}" for k, v in sorted(results.items()))
    logging.info("eval at step %d: %s", step, shown)
    logging.info("written to %s", path)
  return results


def generate_samples(exp: Experiment, state: TrainState, num: int, seed: int
                     ) -> tuple[np.ndarray, dict[str, float]]:
  """``num`` samples in chunks of ``sampling.batch_size``, gathered to the host."""
  chunk = min(int(exp.config.sampling.batch_size), num)
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), 2_000_003)
  pieces, infos = [], []
  t0 = time.time()
  for i in range((num + chunk - 1) // chunk):
    samples, info = exp.sample_fn(state, jax.random.fold_in(rng, i), chunk)
    pieces.append(np.asarray(multihost_utils.process_allgather(samples, tiled=True))
                  if jax.process_count() > 1 else np.asarray(jax.device_get(samples)))
    infos.append({k: float(np.mean(v)) for k, v in jax.device_get(info).items()})
  info = {k: float(np.mean([d[k] for d in infos])) for k in infos[0]}
  info["seconds"] = time.time() - t0
  return np.concatenate(pieces)[:num], info


def write_samples(exp: Experiment, state: TrainState, out_dir: str,
                  num: int | None = None, seed: int | None = None) -> dict[str, float]:
  num = int(exp.config.sampling.num_samples) if num is None else num
  seed = exp.config.seed if seed is None else seed
  samples, info = generate_samples(exp, state, num, seed)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "samples.npz"), samples=samples)
    reference = None
    if exp.data_info.is_2d:
      reference = next(data.make_eval_iterator(
          exp.config.data, global_batch_size=min(num, 5000)))["x"]
    sample_images.save_figure(samples, os.path.join(out_dir, "samples.png"),
                              data_info=exp.data_info, reference=reference,
                              data_centered=bool(exp.config.data.centered))
    with open(os.path.join(out_dir, "info.json"), "w") as f:
      json.dump(info, f, indent=2)
  return info


def sample(config: ml_collections.ConfigDict, workdir: str, devices=None,
           output_dir: str | None = None) -> dict[str, float]:
  """``--mode=sample``: EMA samples of the latest checkpoint as .npz and PNG."""
  console.quiet_libraries()
  exp = Experiment(config, workdir, devices)
  state, step, _ = exp.restore_for_inference()
  _inference_banner(exp, "sample", step)
  out_dir = os.path.join(output_dir or workdir, "samples", f"step_{step}")
  info = exp.method.sample_task(state, out_dir)  # e.g. latent VAE manipulations
  if info is not None:
    logging.info("wrote the sample task's output to %s (%s)", out_dir, _describe(info))
    return info
  info = write_samples(exp, state, out_dir)
  logging.info("wrote %d samples to %s (%s)", config.sampling.num_samples, out_dir,
               _describe(info))
  return info


def _describe(info: dict[str, Any]) -> str:
  return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in info.items())


def _inference_banner(exp: Experiment, mode: str, step: int) -> None:
  if jax.process_index() != 0:
    return
  for line in console.banner(mode, exp.config, num_params=exp.num_params, mesh=exp.mesh,
                             workdir=exp.workdir, resumed_from=step,
                             data_description=exp.config.data.name)[:4]:
    logging.info("%s", line.replace("resumed from step", "checkpoint step"))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
