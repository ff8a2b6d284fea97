"""Orbax checkpoints: a "recent" set and a "permanent" set, async saves, topology-free
restore, and a guard against restoring another model's checkpoint.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``. ``meta`` is JSON: the data
iterator position (global batches consumed, so resume is exact), the model fingerprint
and the config. Checkpoints at multiples of ``permanent_every_steps`` are never deleted
(Orbax ``keep_period``); of the others the newest ``keep`` are kept.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk was written by a different model."""


class Checkpointer:
  """Saves and restores the train state plus JSON metadata under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints") if "://" not in workdir \
        else workdir.rstrip("/") + "/checkpoints"
    self.every_steps = int(ckpt_config.every_steps)
    self.permanent_every = int(ckpt_config.permanent_every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(ckpt_config.keep), 1),
        keep_period=self.permanent_every or None,
        enable_async_checkpointing=bool(ckpt_config.async_save),
        create=not read_only,
        read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def should_save(self, step: int) -> bool:
    """Recent every ``every_steps``; permanent every ``permanent_every_steps``."""
    return (self.every_steps > 0 and step % self.every_steps == 0) or (
        self.permanent_every > 0 and step % self.permanent_every == 0)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (async) save of ``state`` and ``meta`` at ``step``."""
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore(self, step: int, abstract_state: Any, fingerprint: dict[str, Any]
              ) -> tuple[Any, dict[str, Any]]:
    """Restores the state at ``step`` onto the shardings of ``abstract_state``.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying the *current*
    mesh's shardings, so a checkpoint written on 8 devices restores on 1 (and the
    reverse) without the saved topology (orbax issues 648, 678).
    """
    meta = self.read_meta(step)
    check_fingerprint(meta.get("fingerprint", {}), fingerprint, self.directory)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    logging.info("restored step %d from %s", step, self.directory)
    return restored["state"], meta

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
  """Raises one clear line when a checkpoint belongs to a different model."""
  if not saved:
    return
  if saved.get("method") != current.get("method"):
    raise CheckpointMismatchError(
        f"checkpoint in {where} was written by method {saved.get('method')!r}, but this "
        f"config trains {current.get('method')!r}; use a new --workdir")
  saved_shapes, cur_shapes = saved.get("param_shapes", {}), current.get("param_shapes", {})
  if saved_shapes != cur_shapes:
    missing = sorted(set(cur_shapes) - set(saved_shapes))
    extra = sorted(set(saved_shapes) - set(cur_shapes))
    changed = sorted(k for k in set(cur_shapes) & set(saved_shapes)
                     if cur_shapes[k] != saved_shapes[k])
    detail = (f"{len(missing)} params missing, {len(extra)} unexpected, "
              f"{len(changed)} with other shapes"
              + (f" (first: {(missing + extra + changed)[0]})" if missing + extra + changed
                 else ""))
    raise CheckpointMismatchError(
        f"checkpoint in {where} was written by a different model "
        f"({saved.get('num_params')} params vs {current.get('num_params')} now; {detail}); "
        "use a new --workdir or the config it was trained with")


def _stage_directory(path: str, what: str) -> str:
  directory = path.rstrip("/")
  if os.path.basename(directory) != "checkpoints":
    directory = os.path.join(directory, "checkpoints")
  if "://" not in directory:
    directory = os.path.abspath(directory)
  if "://" not in directory and not os.path.isdir(directory):
    raise FileNotFoundError(f"{what}: no checkpoints directory at {directory} (train that "
                            f"stage first with --workdir={path})")
  return directory


def check_stage(path: str, what: str = "earlier stage") -> int:
  """The latest step under ``path`` (as ``load_stage``), or one clear FileNotFoundError."""
  directory = _stage_directory(path, what)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=("state", "meta"))
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise FileNotFoundError(f"{what}: no checkpoint in {directory}")
  return int(step)


def read_stage_meta(path: str, what: str = "earlier stage") -> dict[str, Any]:
  """The JSON metadata (fingerprint, config) of the latest checkpoint under ``path``,
  without reading any array; one clear FileNotFoundError naming ``what`` if none."""
  directory = _stage_directory(path, what)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=("state", "meta"))
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{what}: no checkpoint in {directory}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return dict(meta["meta"])


def load_stage(path: str, what: str = "earlier stage") -> dict[str, Any]:
  """The latest checkpoint under ``path`` (a workdir or its ``checkpoints`` folder) as
  host NumPy arrays: ``{"params", "ema_params", "model_state", "step", "meta"}``.

  Used by multi-stage families to start from an earlier stage (LSGM's VAE
  pre-training, the latent VAE's autoencoder). The saved topology is ignored: every
  array is restored onto one host device and fetched, so any device count can read it.
  A path without a checkpoint is one clear ``FileNotFoundError`` naming ``what``.
  """
  directory = _stage_directory(path, what)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=("state", "meta"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{what}: no checkpoint in {directory}")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  device = jax.local_devices(backend="cpu")[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  metadata = manager.item_metadata(step)["state"]
  metadata = getattr(metadata, "tree", metadata)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        metadata)
  state = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  manager.close()
  state = jax.device_get(state)
  logging.info("loaded %s (step %d) from %s", what, step, directory)
  return {"params": state["params"], "ema_params": state["ema_params"],
          "model_state": state.get("model_state", {}), "step": int(step), "meta": dict(meta)}


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of ``abstract_state`` placed on ``shardings``."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)
