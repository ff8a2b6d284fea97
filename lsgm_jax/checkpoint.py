"""Orbax checkpoints: a "recent" set and a "permanent" set, async saves, topology-free
restore, and a guard against restoring another model's checkpoint.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``. ``meta`` is JSON: the data
iterator position (global batches consumed, so resume is exact), the model fingerprint
and the config.

Retention (``prune``, ours rather than Orbax's ``max_to_keep``): checkpoints at multiples
of ``permanent_every_steps`` are never deleted; of the regular ones (multiples of
``every_steps``) the newest ``keep`` are kept; an off-schedule one (written on
preemption or at the last step) is kept only while it is the newest, so repeated
preemptions never evict the regular ones. A step that exists is never overwritten.

Restore (``restore_newest``) tries checkpoints newest first. One that cannot be read
(truncated or missing array files, missing ``meta``/``state``, a stray empty step
folder, ...) is moved aside to ``<step>.damaged`` -- never deleted -- with one warning
line, and the next older one is tried.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk was written by a different model."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, read-only, I/O error)."""


_STORAGE_CODES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "DATA_LOSS", "UNAVAILABLE",
                  "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL")


def _write_error(error: BaseException, directory: str) -> CheckpointWriteError:
  """One clear line for a failed (possibly asynchronous) write."""
  text = " ".join(str(error).split())
  code = next((c for c in _STORAGE_CODES if text.startswith(c)), "")
  # Tensorstore reports status codes; Python's own writes (Orbax metadata) raise OSError.
  errno_code = getattr(error, "errno", None)
  if errno_code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
    code = "RESOURCE_EXHAUSTED"
  elif errno_code in (errno.EACCES, errno.EPERM, errno.EROFS):
    code = "PERMISSION_DENIED"
  what = {"RESOURCE_EXHAUSTED": "disk full", "PERMISSION_DENIED": "permission denied"}.get(
      code, "write failed")
  return CheckpointWriteError(
      f"could not write a checkpoint to {directory}: {what} ({text[:160]}); the older "
      "checkpoints are intact: free the storage and run the same command to resume")


class _WriteErrors:
  """Turns storage errors of a save (raised now or by an earlier asynchronous save) into
  ``CheckpointWriteError``; other errors pass unchanged."""

  def __init__(self, directory: str):
    self.directory = directory

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    if error is None or isinstance(error, CheckpointWriteError):
      return False
    text = str(error)
    if isinstance(error, OSError) or any(text.startswith(c) for c in _STORAGE_CODES):
      raise _write_error(error, self.directory) from error
    return False


class NoReadableCheckpointError(FileNotFoundError):
  """Every checkpoint in the directory is damaged."""


class Checkpointer:
  """Saves and restores the train state plus JSON metadata under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints") if "://" not in workdir \
        else workdir.rstrip("/") + "/checkpoints"
    self.every_steps = int(ckpt_config.every_steps)
    self.permanent_every = int(ckpt_config.permanent_every_steps)
    self.keep = max(int(ckpt_config.keep), 1)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # retention is ``prune``'s
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
    """Starts an (async) save of ``state`` and ``meta`` at ``step``, then prunes.

    Never ``force=True``: a step that already exists is not replaced (Orbax skips it).
    """
    with _WriteErrors(self.directory):
      saved = self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    if not saved:
      logging.warning("checkpoint step %d not written: %s already holds step %s", step,
                      self.directory, self.manager.latest_step())
      return
    self.prune(newest=step)

  def retained(self, steps: list[int]) -> set[int]:
    """Which of ``steps`` the retention rule keeps (module docstring)."""
    if not steps:
      return set()
    permanent = {s for s in steps if self.permanent_every and s % self.permanent_every == 0}
    regular = sorted(s for s in steps if s not in permanent
                     and self.every_steps and s % self.every_steps == 0)
    return permanent | set(regular[-self.keep:]) | {max(steps)}

  def prune(self, newest: int | None = None) -> None:
    """Deletes the finished checkpoints that ``retained`` does not keep."""
    finished = [int(s) for s in self.manager.all_steps()]
    everything = finished + ([newest] if newest is not None else [])
    keep = self.retained(everything)
    for step in finished:
      if step not in keep and step != newest:
        self.manager.delete(step)

  def read_meta(self, step: int) -> dict[str, Any]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore(self, step: int, abstract_state: Any, fingerprint: dict[str, Any],
              fill: Callable[[], Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores the state at ``step`` onto the shardings of ``abstract_state``.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying the *current*
    mesh's shardings, so a checkpoint written on 8 devices restores on 1 (and the
    reverse) without the saved topology (orbax issues 648, 678).

    A checkpoint written before an entry of ``FILLED_FROM_INIT`` joined the model state
    lacks those leaves: they are taken from ``fill()`` (the fresh init), with a warning.
    Their init values are what the older code did: the NCSN++ Fourier frequencies
    (``constants``) were the same fixed values before they became importable, and LSGM's
    ``score_mask`` is all ones (no channel masked) until ``warm_start`` sets it. Any other
    difference of structure is ``CheckpointMismatchError``, never damage.
    """
    meta = self.read_meta(step)
    check_fingerprint(meta.get("fingerprint", {}), fingerprint, self.directory)
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except ValueError as error:  # Orbax: the tree differs from the target (or damage)
      return self._restore_filling_constants(step, abstract_state, fill, error), meta
    logging.vlog(1, "restored step %d from %s", step, self.directory)
    return restored["state"], meta

  def _restore_filling_constants(self, step: int, abstract_state: Any,
                                 fill: Callable[[], Any] | None, error: ValueError) -> Any:
    """``restore`` of a checkpoint whose tree lacks ``model_state`` constants only;
    re-raises ``error`` when the trees agree (then it was damage, not layout)."""
    try:
      raw = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except Exception:  # pylint: disable=broad-except  (unreadable: damage)
      raise error from None
    saved = {_path_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(raw)[0]}
    wanted = _flat_state_dict(abstract_state)
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    if not missing and not unexpected:
      raise error
    fillable = all(k[0] == "model_state" and set(k) & FILLED_FROM_INIT for k in missing)
    if unexpected or not fillable or fill is None:
      names = lambda keys: ", ".join("/".join(k) for k in keys[:4]) + (
          f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
      advice = scan_blocks_advice(missing, unexpected)
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} has another state layout than this "
          f"config's model: missing {names(missing) or 'nothing'}; unexpected "
          f"{names(unexpected) or 'nothing'}" + (f"; {advice}" if advice else ""))
    fresh = fill()
    logging.warning("checkpoint step %d predates %s: taken from the init (the values "
                    "the older code used)", step,
                    ", ".join("/".join(k) for k in missing))
    merged = jax.tree_util.tree_map_with_path(
        lambda p, v: saved.get(_path_key(p), v), flax.serialization.to_state_dict(fresh))
    state = flax.serialization.from_state_dict(fresh, merged)
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
    return jax.device_put(jax.tree.map(jnp.asarray, state), shardings)

  def restore_newest(self, abstract_state: Any, fingerprint: dict[str, Any],
                     fill: Callable[[], Any] | None = None
                     ) -> tuple[Any, dict[str, Any], int] | None:
    """(state, meta, step) of the newest readable checkpoint; None if there is none.

    Damaged ones are moved aside (``quarantine``); a checkpoint of another model is
    not damage and stops with ``CheckpointMismatchError``. If every checkpoint is
    damaged: ``NoReadableCheckpointError`` naming them.
    """
    tried = []
    for step in sorted((int(s) for s in self.manager.all_steps()), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state, fingerprint, fill)
        jax.block_until_ready(state)
        return state, meta, step
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any unreadable file)
        reason = _one_line(e)
        tried.append(f"{step} ({reason})")
        self.quarantine(step, reason)
    if tried:
      raise NoReadableCheckpointError(
          f"no readable checkpoint in {self.directory}: tried {'; '.join(tried)}; the "
          "damaged ones were moved aside to <step>.damaged")
    return None

  def quarantine(self, step: int, reason: str) -> None:
    """Moves the damaged ``<step>`` folder aside to ``<step>.damaged`` (never deletes)."""
    from etils import epath  # pylint: disable=g-import-not-at-top
    source = epath.Path(self.directory) / str(step)
    target = epath.Path(self.directory) / f"{step}.damaged"
    n = 1
    while target.exists():
      target = epath.Path(self.directory) / f"{step}.damaged.{n}"
      n += 1
    try:
      source.rename(target)
      logging.warning("checkpoint step %d is damaged (%s): moved aside to %s", step,
                      reason, target)
    except OSError as e:
      logging.warning("checkpoint step %d is damaged (%s) and could not be moved aside "
                      "(%s): skipped", step, reason, _one_line(e))
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    with _WriteErrors(self.directory):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      with _WriteErrors(self.directory):
        self.manager.wait_until_finished()
    finally:
      self.manager.close()


# model_state entries an older checkpoint may lack, whose init value reproduces the older
# code exactly (``Checkpointer.restore``).
FILLED_FROM_INIT = {"constants", "score_mask"}


def _path_key(path) -> tuple[str, ...]:
  """A pytree key path as strings (dict keys, sequence indices, attribute names)."""
  out = []
  for entry in path:
    for attr in ("key", "idx", "name"):
      if hasattr(entry, attr):
        out.append(str(getattr(entry, attr)))
        break
    else:
      out.append(str(entry))
  return tuple(out)


def _flat_state_dict(tree: Any) -> dict[tuple[str, ...], Any]:
  """Leaves of ``flax.serialization.to_state_dict(tree)`` by string key path."""
  flat = jax.tree_util.tree_flatten_with_path(flax.serialization.to_state_dict(tree))[0]
  return {_path_key(p): v for p, v in flat}


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def scan_blocks_advice(missing: list[Any], unexpected: list[Any]) -> str | None:
  """The flag to pass when a checkpoint holds the same NCSN++ or U-Net in the other parameter
  layout (``model.scan_blocks``: runs of residual blocks stacked under ``*_scan_*``
  names), or None. ``missing`` / ``unexpected``: parameter paths (strings or key tuples)
  the checkpoint lacks / has beyond the current model."""
  scanned = lambda keys: any("_scan_" in str(k) for k in keys)
  if not (scanned(missing) or scanned(unexpected)):
    return None
  return ("it was written with the other model.scan_blocks setting: pass "
          f"--config.model.scan_blocks={not scanned(missing)}")


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
    advice = "use a new --workdir or the config it was trained with"
    if saved.get("num_params") == current.get("num_params"):
      advice = scan_blocks_advice(missing, extra) or advice
    raise CheckpointMismatchError(
        f"checkpoint in {where} was written by a different model "
        f"({saved.get('num_params')} params vs {current.get('num_params')} now; {detail}); "
        + advice)


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
