"""An experiment: a method placed on a device mesh, with its sharded init, jitted train /
eval / sample programs and checkpoint restore. Imports no TensorFlow or clu, so benchmarks
and tools can build the real programs on a bare accelerator image.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

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
