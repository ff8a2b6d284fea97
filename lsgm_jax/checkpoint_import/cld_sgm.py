"""Format ``cld_sgm``: nv-tlabs/CLD-SGM ``checkpoint_*.pth`` -> configs/cld_cifar.py,
configs/cld_celebahq256.py (``:paper`` / ``:post_paper``).

The file is ``util/checkpoint.py::save_checkpoint``'s ``torch.save`` of
``{"optimizer": Adam.state_dict(), "model": DDP(NCSNpp).state_dict(),
"ema": ExponentialMovingAverage.state_dict(), "step": int}``: model keys carry DDP's
``module.`` prefix and include the fixed Fourier frequencies ``all_modules.0.W``; the
EMA holds ``decay``, ``num_updates`` and ``shadow_params`` (a list in
``model.parameters()`` order without ``W``). The EMA goes to ``ema_params``, the raw
weights to ``params``, ``W`` to the model state; Adam's moments become the optax Adam
state when the config's optimizer is Adam / AdamW (else a fresh optimizer state).
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections
import numpy as np

from lsgm_jax.checkpoint_import import (ImportedCheckpoint, ImportMismatchError, check_tree,
                                        in_target_layout)
from lsgm_jax.checkpoint_import import ncsnpp_torch as nt
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError, read_torch_file

ENTRIES = ("model", "ema", "optimizer", "step")


def read_training_file(path: str, what: str) -> Mapping[str, Any]:
  """The ``{model, ema, optimizer, step}`` dict of a score_sde-style ``.pth`` file."""
  obj = read_torch_file(path)
  if not isinstance(obj, Mapping) or "model" not in obj or "step" not in obj:
    keys = sorted(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointFormatError(
        f"{path}: not a {what} training checkpoint (expected the entries "
        f"{', '.join(ENTRIES)}; found {keys})")
  return obj


def check_model_config(config: ml_collections.ConfigDict, what: str, sde: str | None) -> None:
  """One line unless ``config`` builds an NCSN++ score model of method sgm."""
  if config.method != "sgm" or config.model.name != "ncsnpp":
    raise ImportMismatchError(
        f"{what} files hold an NCSN++ score model: use a config with method='sgm' and "
        f"model.name='ncsnpp' (got method={config.method!r}, model.name="
        f"{config.model.name!r})")
  if sde is not None and config.sde.name != sde:
    raise ImportMismatchError(f"{what} files need config.sde.name={sde!r} "
                              f"(got {config.sde.name!r})")


@in_target_layout
def convert_training_file(obj: Mapping[str, Any], config: ml_collections.ConfigDict,
                          target: Any, what: str, buffers: tuple[str, ...] = ()
                          ) -> ImportedCheckpoint:
  """Maps a ``{model, ema, optimizer, step}`` dict of PyTorch NCSN++ onto ``target``."""
  layout = nt.reference_layout(config.model, int(config.data.image_size))
  model_sd = nt.strip_prefix(obj["model"])
  params, model_state = nt.convert_model(model_sd, layout, target.params,
                                         target.model_state, f"{what} 'model'",
                                         buffers=buffers)
  ema_sd = nt.ema_state_dict(obj.get("ema"), model_sd, layout, buffers)
  ema_params = None
  if ema_sd is not None:
    ema_params, _ = nt.convert_model(ema_sd, layout, target.params, target.model_state,
                                     f"{what} 'ema'", buffers=buffers)
  step = int(np.asarray(obj["step"]))
  opt_state, opt_note = None, "fresh optimizer state"
  moments = nt.adam_moments(obj.get("optimizer"), model_sd, layout, buffers)
  if moments is not None and config.optim.optimizer in ("adam", "adamw"):
    mu_sd, nu_sd, count = moments
    trees = []
    for sd in (mu_sd, nu_sd):
      full = dict(model_sd, **sd)  # W (no moments) keeps its place; dropped below
      tree, _ = nt.convert_model(full, layout, target.params, target.model_state,
                                 f"{what} 'optimizer'", buffers=buffers)
      trees.append(tree)
    opt_state = nt.optax_adam_state(target.opt_state, trees[0], trees[1], count, step)
    if opt_state is not None:
      check_tree(target.opt_state, opt_state, f"{what} 'optimizer'")
      opt_note = f"Adam moments (step {count})"
  description = (f"{what} step {step}: raw weights -> params, "
                 + ("EMA" if ema_params is not None else "no EMA: params") + " -> ema_params, "
                 + opt_note)
  return ImportedCheckpoint(params=params, ema_params=ema_params, model_state=model_state,
                            step=step, opt_state=opt_state, description=description)


def convert(path: str, config: ml_collections.ConfigDict, target: Any) -> ImportedCheckpoint:
  """Reads a CLD-SGM ``checkpoint_*.pth`` (no torch) into this project's layout.

  Args:
    path: the ``.pth`` file.
    config: a CLD NCSN++ config (configs/cld_cifar.py, configs/cld_celebahq256.py).
    target: ``jax.eval_shape`` of the method's ``init_state``.

  Returns:
    The ``ImportedCheckpoint``.

  Raises:
    CheckpointFormatError: not a CLD-SGM training file.
    ImportMismatchError: the file's model does not fit the config's (one line).
  """
  check_model_config(config, "CLD-SGM", "cld")
  obj = read_training_file(path, "CLD-SGM")
  return convert_training_file(obj, config, target, "CLD-SGM")
