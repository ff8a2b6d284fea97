"""``--mode=import``: a reference's released file -> an ordinary checkpoint of this project.

``python -m lsgm_jax.main --mode=import --config=<config> --workdir=DIR
--config.checkpoint.import_path=FILE --config.checkpoint.import_format=<format>``

Order, so that a bad file writes nothing: (1) refuse a missing path / format and a
workdir that already holds checkpoints; (2) build the experiment and its abstract state
(``jax.eval_shape`` of ``init_state``, nothing allocated); (3) the format's ``convert``
reads and maps the whole file; (4) every leaf is checked against the abstract state
(``check_tree``: missing / unexpected / mis-shaped keys in one line); only then (5) the
``TrainState`` is assembled -- ``ema_params = params`` when the file has no EMA, the
file's optimizer state when the format could convert it, else the method's fresh
``tx.init(params)`` -- and (6) written with the project's ``Checkpointer`` at the file's
step. ``--mode=sample|eval|train`` then use DIR as any other workdir.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsgm_jax import checkpoint
from lsgm_jax.checkpoint_import import (FORMATS, ImportedCheckpoint, ImportMismatchError,
                                        check_tree, converter)
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError
from lsgm_jax.train_state import TrainState


def existing_steps(workdir: str) -> list[str]:
  """Checkpoint step folders already in ``<workdir>/checkpoints`` (read only)."""
  directory = os.path.join(workdir, "checkpoints")
  if "://" in workdir or not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if n.split(".")[0].isdigit())


def check_request(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
  """(path, format) of the import, or one clear error before anything is built."""
  path = str(config.checkpoint.import_path)
  fmt = str(config.checkpoint.import_format)
  if not path or not fmt:
    raise ValueError(
        "--mode=import needs --config.checkpoint.import_path=FILE and "
        f"--config.checkpoint.import_format=<{'|'.join(sorted(FORMATS))}>")
  if fmt not in FORMATS:
    raise ValueError(f"--config.checkpoint.import_format={fmt!r} is not one of "
                     f"{', '.join(sorted(FORMATS))}")
  if "://" not in path and not os.path.exists(path):
    raise FileNotFoundError(f"--config.checkpoint.import_path={path}: no such file")
  steps = existing_steps(workdir)
  if steps:
    raise ValueError(f"--workdir={workdir} already holds checkpoints (steps "
                     f"{', '.join(steps[:4])}); import into a new workdir")
  return path, fmt


def read_checkpoint(path: str, fmt: str, config: ml_collections.ConfigDict, target: Any
                    ) -> ImportedCheckpoint:
  """``convert`` of ``fmt`` with every leaf checked; unreadable files as one line."""
  try:
    imported = converter(fmt)(path, config, target)
  except (ImportMismatchError, CheckpointFormatError, FileNotFoundError):
    raise
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, TypeError,
          ValueError, IndexError, AttributeError, OSError) as e:
    text = " ".join(str(e).split())[:200]
    raise CheckpointFormatError(
        f"{path}: not a readable {fmt} checkpoint ({type(e).__name__}: {text})") from None
  what = f"{fmt} file {os.path.basename(path)}"
  check_tree(target.params, imported.params, f"{what} (params)")
  if imported.ema_params is not None:
    check_tree(target.params, imported.ema_params, f"{what} (EMA params)")
  check_tree(target.model_state, imported.model_state, f"{what} (model state)")
  if imported.opt_state is not None:
    check_tree(target.opt_state, imported.opt_state, f"{what} (optimizer state)")
  if imported.step < 0:
    raise CheckpointFormatError(f"{path}: negative step {imported.step}")
  return imported


def build_state(imported: ImportedCheckpoint, target: Any, method, rng: jax.Array
                ) -> TrainState:
  """The ``TrainState`` of an imported file (host arrays, dtypes of ``target``)."""
  def cast(tree, like):
    return jax.tree.map(lambda x, t: jnp.asarray(np.asarray(x), t.dtype), tree, like)

  params = cast(imported.params, target.params)
  ema = cast(imported.ema_params if imported.ema_params is not None else imported.params,
             target.params)
  if imported.opt_state is not None:
    opt_state = cast(imported.opt_state, target.opt_state)
  else:
    opt_state = method.make_optimizer().init(params)
  _, state_rng = jax.random.split(rng)  # as Method.init_state
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=jnp.asarray(imported.step, jnp.int32), params=params,
                    ema_params=ema, opt_state=opt_state,
                    model_state=cast(imported.model_state, target.model_state),
                    rng=state_rng, num_skipped=zero, consecutive_skips=zero)


def import_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """``--mode=import``: converts, checks, then writes ``<workdir>/checkpoints/<step>``.

  Returns:
    ``{"step", "num_params", "description", "directory"}``.

  Raises:
    ValueError / FileNotFoundError: bad request, unreadable file or a file that does
      not fit the config (one line; nothing is written).
  """
  from lsgm_jax.experiment import Experiment  # jit programs are built, not compiled
  path, fmt = check_request(config, workdir)
  if jax.process_count() > 1:
    raise ValueError("--mode=import runs in one process (the written checkpoint restores "
                     "on any number of processes and devices)")
  exp = Experiment(config, workdir)
  target = exp.abstract_state
  imported = read_checkpoint(path, fmt, config, target)
  state = build_state(imported, target, exp.method, exp.rng)
  # Host memory, one device: no accelerator memory is needed, and Orbax writes whole
  # arrays (a mesh-sharded state makes it compile one slicing program per leaf). Restores
  # place the arrays on the run's own shardings (Checkpointer.restore).
  state = jax.device_put(state, jax.local_devices(backend="cpu")[0])
  meta = {"data_position": 0, "fingerprint": exp.fingerprint,
          "config": config.to_json_best_effort(),
          "imported_from": os.path.abspath(path), "import_format": fmt,
          "import_description": imported.description}
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint)
  try:
    checkpointer.save(imported.step, state, meta)
  finally:
    checkpointer.close()
  logging.info("imported %s (%s): %s -> %s/%d", path, fmt, imported.description,
               checkpointer.directory, imported.step)
  return {"step": imported.step, "num_params": exp.num_params,
          "description": imported.description, "directory": checkpointer.directory}
