"""The one training loop for every family: mesh, sharded jit step, checkpoints, logging,
preemption; plus evaluation and sampling from a checkpoint.

Resume order (``train``): this workdir's latest checkpoint, else a fresh init from
``config.seed``. The data iterator restarts at the saved position, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import collections
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
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from lsgm_jax import checkpoint, data, methods, parallel
from lsgm_jax.evaluation import distances, sample_images, sample_quality
from lsgm_jax.train_state import TrainState


class SkipLimitError(RuntimeError):
  """Too many consecutive steps were skipped by the guard."""


class Preemption:
  """Turns SIGTERM into a flag read at the next step boundary (no host sync).

  With several processes, jax's own preemption service (started by
  ``jax.distributed.initialize``) makes every process agree on the step at which to
  stop, so the signal handler is left to it.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: checkpointing at the next step boundary")
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore_handler(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Experiment:
  """A method placed on a mesh: sharded init, jitted steps and checkpoint restore."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
    self.config = config
    self.workdir = workdir
    self.data_info = data.dataset_info(config.data)
    self.method = methods.build_method(config, self.data_info)
    self.mesh = parallel.make_mesh(config.parallel, devices)
    self.rng = jax.random.PRNGKey(config.seed)

    self.abstract_state = jax.eval_shape(self.method.init_state, self.rng)
    self.state_shardings = parallel.state_shardings(
        self.abstract_state, self.mesh, int(config.parallel.fsdp_min_size))
    self.fingerprint = self.method.fingerprint(self.abstract_state.params)
    self.num_params = self.fingerprint["num_params"]

    batch_sharding = parallel.batch_sharding(self.mesh)
    replicated = parallel.replicated(self.mesh)
    self.init_fn = jax.jit(self.method.init_state, out_shardings=self.state_shardings)
    self.train_step = jax.jit(
        self.method.train_step,
        in_shardings=(self.state_shardings, batch_sharding),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=0)
    self.eval_step = jax.jit(
        self.method.eval_step,
        in_shardings=(self.state_shardings, batch_sharding, replicated),
        out_shardings=replicated)
    # Built once, so sampling during training (training.sample_every) compiles once.
    self.sample_fn = jax.jit(self.method.sample, static_argnums=2,
                             out_shardings=(replicated, replicated))

  def check_batch_size(self, global_batch_size: int, what: str) -> None:
    devices = self.mesh.devices.size
    if global_batch_size % devices or global_batch_size % jax.process_count():
      raise ValueError(
          f"{what}={global_batch_size} must be divisible by the {devices} devices and "
          f"{jax.process_count()} processes of this job")

  def init_or_restore(self, checkpointer: checkpoint.Checkpointer
                      ) -> tuple[TrainState, dict[str, Any]]:
    """This workdir's latest checkpoint if there is one, else a fresh state."""
    latest = checkpointer.latest_step()
    if latest is None:
      self.method.check_warm_start()
      state = self.method.warm_start(self.init_fn(self.rng))
      return jax.device_put(state, self.state_shardings), {}
    target = checkpoint.abstract_with_shardings(self.abstract_state, self.state_shardings)
    return checkpointer.restore(latest, target, self.fingerprint)

  def restore_for_inference(self) -> tuple[TrainState, int, dict[str, Any]]:
    """(state, step, meta) of the latest checkpoint of ``workdir``; a clear error if
    there is none."""
    checkpointer = checkpoint.Checkpointer(self.workdir, self.config.checkpoint, read_only=True)
    latest = checkpointer.latest_step()
    if latest is None:
      raise FileNotFoundError(
          f"no checkpoint in {checkpointer.directory}: train first with --mode=train "
          f"--workdir={self.workdir}")
    target = checkpoint.abstract_with_shardings(self.abstract_state, self.state_shardings)
    state, meta = checkpointer.restore(latest, target, self.fingerprint)
    checkpointer.close()
    return state, latest, meta


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
  """
  exp = Experiment(config, workdir, devices)
  training = config.training
  exp.check_batch_size(int(training.batch_size), "training.batch_size")
  parallel.log_process_layout(exp.mesh)
  logging.info("method %s: %s trainable parameters", config.method, f"{exp.num_params:,}")

  is_main = jax.process_index() == 0
  # Synchronous writes: clu's background writer thread can call tf.summary while the main
  # thread is still lazily importing TensorFlow (tf 2.21: "'LazyModule' object is not
  # callable", the scalar is lost). Writes happen only every log_every steps.
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=False)
  if is_main:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint)
  state, meta = exp.init_or_restore(checkpointer)
  start_step = int(jax.device_get(state.step))
  data_position = int(meta.get("data_position", start_step))
  writer.write_scalars(start_step, {"num_params": exp.num_params})

  train_iter = data.make_train_iterator(
      config.data, global_batch_size=int(training.batch_size), seed=config.seed,
      start_position=data_position, process_index=jax.process_index(),
      process_count=jax.process_count())
  preemption = Preemption()
  progress = periodic_actions.ReportProgress(
      num_train_steps=int(training.num_train_steps), writer=writer, every_steps=int(training.log_every))
  check_every = max(1, min(int(training.log_every), int(training.max_consecutive_skips)))
  buffer: list[dict[str, jax.Array]] = []
  log_buffer: collections.deque = collections.deque()

  def save(step: int) -> None:
    checkpointer.save(step, state, {
        "data_position": step, "fingerprint": exp.fingerprint,
        "config": config.to_json_best_effort()})

  step = start_step
  try:
    while step < int(training.num_train_steps):
      batch = parallel.global_batch(next(train_iter), exp.mesh)
      state, metrics = exp.train_step(state, batch)
      step += 1
      buffer.append(metrics)
      progress(step)

      if step % check_every == 0 or step == int(training.num_train_steps):
        host = _host_metrics(buffer)
        buffer = []
        log_buffer.extend(host)
        last = host[-1]
        limit = int(training.max_consecutive_skips)
        for offset, m in enumerate(host):  # every step of the window, not only the last
          if m["consecutive_skips"] >= limit:
            raise SkipLimitError(
                _skip_limit_message(step - len(host) + 1 + offset, m, config))
        if step % int(training.log_every) == 0 or step == int(training.num_train_steps):
          means = {f"train/{k}": float(np.mean([m[k] for m in log_buffer]))
                   for k in log_buffer[0] if k not in ("num_skipped", "consecutive_skips")}
          means["train/num_skipped"] = last["num_skipped"]
          writer.write_scalars(step, means)
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
        checkpointer.close()
        writer.flush()
        return state
      if checkpointer.should_save(step):
        save(step)
    if checkpointer.latest_step() != step:
      save(step)
  finally:
    preemption.restore_handler()
    checkpointer.close()
    writer.flush()
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


def evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None
             ) -> dict[str, float]:
  """``--mode=eval``: metrics of the latest checkpoint, to JSON and TensorBoard."""
  exp = Experiment(config, workdir, devices)
  state, step, _ = exp.restore_for_inference()
  results = evaluate_state(exp, state)
  if config.eval.fid:  # labelled keys: fid50k, inception_score50k, kid50k, ...
    results.update(sample_quality.evaluate(exp, state, workdir, step))
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_step_{step}.json")
    with open(path, "w") as f:
      json.dump({"step": step, **results}, f, indent=2)
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, "eval"), asynchronous=False)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    writer.flush()
    logging.info("eval at step %d: %s (written to %s)", step, results, path)
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


def sample(config: ml_collections.ConfigDict, workdir: str, devices=None
           ) -> dict[str, float]:
  """``--mode=sample``: EMA samples of the latest checkpoint as .npz and PNG."""
  exp = Experiment(config, workdir, devices)
  state, step, _ = exp.restore_for_inference()
  out_dir = os.path.join(workdir, "samples", f"step_{step}")
  info = exp.method.sample_task(state, out_dir)  # e.g. latent VAE manipulations
  if info is not None:
    logging.info("wrote the sample task's output to %s (%s)", out_dir, info)
    return info
  info = write_samples(exp, state, out_dir)
  logging.info("wrote %d samples to %s (%s)", config.sampling.num_samples, out_dir, info)
  return info


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
