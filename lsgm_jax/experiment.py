"""An experiment: a method placed on a device mesh, with its sharded init, jitted train /
eval / sample programs and checkpoint restore. Imports no TensorFlow or clu, so benchmarks
and tools can build the real programs on a bare accelerator image.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from lsgm_jax import checkpoint, data, methods, parallel
from lsgm_jax.train_state import TrainState


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

  def abstract_train_batch(self, global_batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of a global training batch as the data pipelines yield it
    (``{"x": float32 [B, ...], "label": int32 [B]}``)."""
    return {"x": jax.ShapeDtypeStruct((global_batch_size,) + tuple(self.data_info.shape),
                                      jnp.float32),
            "label": jax.ShapeDtypeStruct((global_batch_size,), jnp.int32)}

  def compile_train_step_in_background(self, global_batch_size: int) -> "BackgroundCompile":
    """Starts tracing, lowering and compiling the train step on a thread, from abstract
    values, so that it overlaps the state's initialisation or checkpoint restore. On GPU
    nothing starts early (XLA:GPU autotunes kernels on the device the init or restore is
    using): ``result`` compiles then, as before."""
    platform = self.mesh.devices.flat[0].platform
    return BackgroundCompile(self.train_step, self.abstract_state,
                             self.abstract_train_batch(global_batch_size),
                             start=platform in ("cpu", "tpu"))

  def check_batch_size(self, global_batch_size: int, what: str) -> None:
    devices = self.mesh.devices.size
    if global_batch_size % devices or global_batch_size % jax.process_count():
      raise ValueError(
          f"{what}={global_batch_size} must be divisible by the {devices} devices and "
          f"{jax.process_count()} processes of this job")

  def _fresh_state(self) -> TrainState:
    """The init state (its constants fill an older checkpoint's missing ones)."""
    return self.init_fn(self.rng)

  def init_or_restore(self, checkpointer: checkpoint.Checkpointer
                      ) -> tuple[TrainState, dict[str, Any]]:
    """This workdir's newest readable checkpoint if there is one, else a fresh state."""
    target = checkpoint.abstract_with_shardings(self.abstract_state, self.state_shardings)
    restored = checkpointer.restore_newest(target, self.fingerprint, self._fresh_state)
    if restored is None:
      self.method.check_warm_start()
      state = self.method.warm_start(self.init_fn(self.rng))
      return jax.device_put(state, self.state_shardings), {}
    state, meta, _ = restored
    return state, meta

  def restore_for_inference(self) -> tuple[TrainState, int, dict[str, Any]]:
    """(state, step, meta) of the newest readable checkpoint of ``workdir``; a clear
    error if there is none."""
    checkpointer = checkpoint.Checkpointer(self.workdir, self.config.checkpoint, read_only=True)
    target = checkpoint.abstract_with_shardings(self.abstract_state, self.state_shardings)
    try:
      restored = checkpointer.restore_newest(target, self.fingerprint, self._fresh_state)
    finally:
      checkpointer.close()
    if restored is None:
      raise FileNotFoundError(
          f"no checkpoint in {checkpointer.directory}: train first with --mode=train "
          f"--workdir={self.workdir}")
    state, meta, step = restored
    return state, step, meta


class BackgroundCompile:
  """The train step compiled on a thread from the state's and a batch's abstract values.

  Start-up was the sum of the state's init (or restore) and the step's compile; with the
  compile on a thread it is about the larger of the two (XLA compiles without the GIL).
  ``result(state, batch)`` waits for it and returns ``(traced, compiled, seconds)``; a
  real batch whose shapes differ from the abstract one is compiled for then and there,
  and so is everything when ``start`` is False.
  """

  def __init__(self, jitted, abstract_state, abstract_batch, *, start: bool = True):
    self._jitted = jitted
    self._abstract_batch = abstract_batch
    self._outcome: tuple[Any, ...] | BaseException | None = None
    self._thread = threading.Thread(target=self._compile, args=(abstract_state,),
                                    name="compile-train-step", daemon=True)
    if start:
      self._thread.start()

  def _compile(self, abstract_state) -> None:
    start = time.perf_counter()
    try:
      traced = self._jitted.trace(abstract_state, self._abstract_batch)
      self._outcome = (traced, traced.lower().compile(), time.perf_counter() - start)
    except BaseException as e:  # re-raised by result() in the caller's thread
      self._outcome = e

  def wait(self) -> None:
    """Blocks until the thread is done (before an exit, so none is left compiling)."""
    if self._thread.ident is not None:
      self._thread.join()

  def result(self, state, batch) -> tuple[Any, Any, float]:
    self.wait()
    if isinstance(self._outcome, BaseException):
      raise self._outcome
    spec = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), tree)
    if self._outcome is not None and spec(batch) == spec(self._abstract_batch):
      return self._outcome
    if self._outcome is not None:
      logging.warning("the training batch %s differs from the expected %s: compiling the "
                      "train step again for it", spec(batch), spec(self._abstract_batch))
    start = time.perf_counter()
    traced = self._jitted.trace(state, batch)
    return traced, traced.lower().compile(), time.perf_counter() - start
