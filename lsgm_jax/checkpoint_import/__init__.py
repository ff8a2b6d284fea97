"""Importing the references' released checkpoints (``--mode=import``).

One module per reference format. Each exposes

    convert(path: str, config: ml_collections.ConfigDict, target: TrainState-shaped
            pytree of jax.ShapeDtypeStruct) -> ImportedCheckpoint

which reads the file WITHOUT torch (``models.autoencoder_convert``'s restricted
unpickler, flax msgpack, pickles of NumPy arrays), maps every tensor into this project's
tree and checks it against ``target`` with ``check_tree`` (one line naming missing /
unexpected / mis-shaped keys). Converters map onto the unrolled NCSN++ / U-Net layout and are
wrapped by ``in_target_layout``, which returns the layout of ``target`` (scanned blocks
when ``model.scan_blocks`` is on). ``FORMATS`` maps ``config.checkpoint.import_format`` to
the module; modules are imported lazily so a format's parsing code costs nothing unless
used.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping

import jax
import numpy as np

FORMATS: dict[str, str] = {
    "cld_sgm": "lsgm_jax.checkpoint_import.cld_sgm",
    "score_sde": "lsgm_jax.checkpoint_import.score_sde",
    "lsgm": "lsgm_jax.checkpoint_import.lsgm_format",
    "latent_vae_jax": "lsgm_jax.checkpoint_import.latent_vae_jax",
    "score_vae": "lsgm_jax.checkpoint_import.score_vae",
}


class ImportMismatchError(ValueError):
  """The file does not fit the config's model (keys or shapes); one line."""


@dataclasses.dataclass
class ImportedCheckpoint:
  """What a reference file holds, already in this project's layout (NumPy leaves).

  ``params`` / ``ema_params`` / ``model_state`` have exactly the structure of the
  corresponding ``TrainState`` fields; ``ema_params`` is None when the file has no EMA
  (the importer then copies ``params``); ``opt_state`` is None unless the file's
  optimizer state was convertible.
  """

  params: Any
  ema_params: Any | None
  model_state: Any
  step: int
  opt_state: Any | None = None
  description: str = ""


def in_target_layout(convert: Callable[..., ImportedCheckpoint]
                     ) -> Callable[..., ImportedCheckpoint]:
  """Wraps a converter ``convert(source, config, target, ...)`` written for the unrolled
  NCSN++ / U-Net parameter layout (the references' own: one entry per residual block) so
  that it returns the layout of ``target``.

  With ``model.scan_blocks`` on (the default) a run of equal residual blocks is one entry
  with its blocks stacked on axis 0 (``lsgm_jax.models.scan_layout``). The wrapped
  converter sees ``target`` in the unrolled layout (``scan_layout.unrolled_layout``), maps
  and checks the file against that, and its params, EMA, model state (spectral power
  vectors) and optimizer state are then stacked into ``target``'s layout
  (``scan_layout.scanned_layout``). A target without scanned runs passes through unchanged.
  """
  @functools.wraps(convert)
  def wrapped(source: Any, config: Any, target: Any, *args: Any, **kwargs: Any
              ) -> ImportedCheckpoint:
    from lsgm_jax.models import scan_layout  # deferred: keeps this module light
    imported = convert(source, config, scan_layout.unrolled_layout(target), *args, **kwargs)
    relayout = lambda tree, like: (None if tree is None  # noqa: E731
                                   else scan_layout.scanned_layout(tree, like))
    return dataclasses.replace(
        imported, params=relayout(imported.params, target.params),
        ema_params=relayout(imported.ema_params, target.ema_params),
        model_state=relayout(imported.model_state, target.model_state),
        opt_state=relayout(imported.opt_state, target.opt_state))
  return wrapped


def converter(import_format: str) -> Callable[..., ImportedCheckpoint]:
  """The ``convert`` function of ``import_format``; one clear error for an unknown name."""
  if import_format not in FORMATS:
    raise ValueError(
        f"--config.checkpoint.import_format={import_format!r} is not one of "
        f"{', '.join(sorted(FORMATS))}")
  return importlib.import_module(FORMATS[import_format]).convert


def _flat(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def check_tree(target: Any, tree: Any, what: str, *, show: int = 4) -> None:
  """Raise ``ImportMismatchError`` (one line) unless ``tree`` has exactly ``target``'s
  leaves with the same shapes. ``target`` leaves need only ``.shape``."""
  want, got = _flat(target), _flat(tree)
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  misshaped = [f"{k} {tuple(np.shape(got[k]))} != {tuple(want[k].shape)}"
               for k in sorted(set(want) & set(got))
               if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  problems = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("mis-shaped", misshaped)):
    if items:
      more = f" (+{len(items) - show} more)" if len(items) > show else ""
      problems.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
  if problems:
    raise ImportMismatchError(f"{what} does not fit the config's model: " + "; ".join(problems))


def unconsumed(state_dict: Mapping[str, Any], consumed: set[str], what: str,
               *, show: int = 4) -> None:
  """Raise ``ImportMismatchError`` if the file holds tensors no mapping used."""
  left = sorted(set(state_dict) - consumed)
  if left:
    more = f" (+{len(left) - show} more)" if len(left) > show else ""
    raise ImportMismatchError(
        f"{what}: {len(left)} tensors of the file map to nothing in the config's model: "
        f"{', '.join(left[:show])}{more}")
