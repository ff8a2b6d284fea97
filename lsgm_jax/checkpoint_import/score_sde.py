"""Format ``score_sde``: yang-song/score_sde_pytorch ``checkpoint_*.pth`` and yang-song/
score_sde (JAX) ``checkpoint_<N>`` files of NCSN++ / DDPM++ models -> an ``sgm`` config
with ``model.name='ncsnpp'`` (configs/vp_cifar_ddpmpp.py for DDPM++ cont. (VP)).

* PyTorch (``utils.py::save_checkpoint``): ``{"optimizer", "model", "ema", "step"}`` with
  ``DataParallel``'s ``module.`` prefix -- the layout CLD-SGM inherited, plus the
  ``sigmas`` buffer (derived from the config, dropped). Mapped by
  ``ncsnpp_torch`` (the same ``all_modules`` order).
* JAX (``run_lib.py``: ``checkpoints.save_checkpoint(unreplicate(pstate))``): flax
  msgpack of ``models/utils.py::State`` -- ``{"step", "optimizer": {"target": params,
  "state": {"step", "param_states": {leaf: {"grad_ema", "grad_sq_ema"}}}}, "lr",
  "model_state", "ema_rate", "params_ema", "rng"}``. The NCSN++ params are auto-named per
  class in creation order (``Dense_0``, ``Conv_0``, ``ResnetBlockBigGANpp_3``,
  ``AttnBlockpp_0``, ``GaussianFourierProjection_0``, ...), which is the same order as
  the PyTorch ``all_modules`` list; leaves are already in flax layout. Leaves with an
  extra leading replica axis (a file saved without ``unreplicate``) take replica 0.

What this codebase expresses: the continuous-time VP / sub-VP models with positional
embedding of ``999 t`` (DDPM++ cont., NCSN++ cont. with ``embedding_type='positional'``),
where score = -net / std as here. score_sde's VE models condition the network on
``log sigma(t)`` and divide its output by ``sigma`` (``scale_by_sigma``), and its
discrete-time models take integer labels; neither is a configuration of this
codebase's SGM, so such a config is refused with one line.
"""

from __future__ import annotations

import zipfile
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from lsgm_jax.checkpoint_import import (ImportedCheckpoint, ImportMismatchError,
                                        check_tree, in_target_layout, unconsumed)
from lsgm_jax.checkpoint_import import cld_sgm
from lsgm_jax.checkpoint_import import ncsnpp_torch as nt
from lsgm_jax.models.autoencoder_convert import LEGACY_MAGIC, CheckpointFormatError
from lsgm_jax.models.layers import FOURIER_COLLECTION

TORCH_BUFFERS = ("sigmas",)

_CLASS = {"dense": "Dense", "conv": "Conv", "groupnorm": "GroupNorm", "attn": "AttnBlockpp",
          "combine": "Combine", "fourier": "GaussianFourierProjection"}


def check_config(config: ml_collections.ConfigDict) -> None:
  """One line unless the config is a score_sde model this codebase can express."""
  cld_sgm.check_model_config(config, "score_sde", None)
  if config.sde.name not in ("vpsde", "subvpsde") or config.model.embedding_type != "positional":
    raise ImportMismatchError(
        "score_sde imports support the continuous VP / sub-VP NCSN++ / DDPM++ models "
        "(config.sde.name vpsde|subvpsde, model.embedding_type='positional'); score_sde's "
        "VE models condition on log sigma(t) and scale by 1/sigma, which this codebase's "
        f"SGM does not express (got sde {config.sde.name!r}, embedding "
        f"{config.model.embedding_type!r})")


def _is_torch_file(path: str) -> bool:
  if zipfile.is_zipfile(path):
    return True
  with open(path, "rb") as f:
    head = f.read(16)
  # A legacy torch file starts with the pickled magic number (protocol 2: 0x80 0x02 0x8a).
  return head[:2] == b"\x80\x02" and LEGACY_MAGIC.to_bytes(10, "little") in head


def jax_names(layout, resblock_type: str) -> dict[str, tuple[str, str]]:
  """score_sde (JAX) auto-name of each layout entry (``ResnetBlockBigGANpp_3``) ->
  (this codebase's module name, kind).

  flax numbers submodules per class in creation order, parameter-free ones included:
  score_sde's ``input_skip`` pyramid creates a ``Downsample`` before each ``Combine`` and
  its ``output_skip`` pyramid an ``Upsample`` before each head below the top level
  (models/ncsnpp.py), which PyTorch keeps outside ``all_modules``.
  """
  counters: dict[str, int] = {}
  names = {}
  heads = 0
  for name, kind in layout:
    phantom = None
    if kind == "combine":
      phantom = "Downsample"
    elif name.endswith("_pyramid_head/norm"):
      heads += 1
      phantom = "Upsample" if heads > 1 else None  # output_skip only: residual has one head
    if phantom:
      counters[phantom] = counters.get(phantom, 0) + 1
    if kind == "resblock":
      cls = "ResnetBlockBigGANpp" if resblock_type == "biggan" else "ResnetBlockDDPMpp"
    elif kind == "resample":
      cls = "Downsample" if name.startswith("down_") else "Upsample"
    else:
      cls = _CLASS[kind]
    index = counters.get(cls, 0)
    counters[cls] = index + 1
    names[f"{cls}_{index}"] = (name, kind)
  return names


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
             ) -> dict[tuple[str, ...], np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = np.asarray(value)
  return out


def _nest(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


_LEAVES = {"W": "kernel", "b": "bias", "kernel": "kernel", "bias": "bias", "scale": "scale"}


def convert_flax_params(tree: Mapping[str, Any], names: Mapping[str, tuple[str, str]],
                        target_params: Any, target_model_state: Any | None, what: str
                        ) -> tuple[dict, dict]:
  """(params, model_state) of a score_sde (JAX) NCSN++ params tree; flax leaves keep
  their layout, names follow ``ncsnpp_torch``'s child table (the PyTorch port kept the
  JAX names). ``target_model_state=None``: no Fourier W expected (optimizer moments)."""
  if not isinstance(tree, Mapping):
    raise ImportMismatchError(f"{what}: not a params tree")
  flat = _flatten(tree)
  params, constants, consumed = {}, {}, set()
  for path, value in flat.items():
    entry = names.get(path[0])
    if entry is None or len(path) < 2:
      continue
    name, kind = entry
    child, leaf = ".".join(path[1:-1]), path[-1]
    if kind == "fourier":
      if target_model_state is not None and not child and leaf == "W":
        constants[(name, "W")] = value
        consumed.add("/".join(path))
      continue
    sub = nt._CHILDREN[kind].get(child)  # pylint: disable=protected-access
    if sub is None or leaf not in _LEAVES:
      continue
    params[tuple(name.split("/")) + sub + (_LEAVES[leaf],)] = value
    consumed.add("/".join(path))
  unconsumed({"/".join(p): v for p, v in flat.items()}, consumed, what)
  params_tree = _nest(params)
  check_tree(target_params, params_tree, f"{what} (params)")
  model_state = {FOURIER_COLLECTION: _nest(constants)} if constants else {}
  if target_model_state is not None:
    check_tree(target_model_state, model_state, f"{what} (model state)")
  return params_tree, model_state


def _unreplicate(tree: Any, target: Any) -> Any:
  """Replica 0 when every leaf carries one extra leading (device) axis that the model's
  leaves (params and the Fourier W) do not have."""
  if not isinstance(tree, Mapping):
    return tree
  want = sorted(tuple(x.shape) for x in jax.tree.leaves((target.params, target.model_state)))
  got = sorted(np.shape(v) for v in _flatten(tree).values())
  if got and got != want and all(len(g) >= 1 for g in got) and \
      sorted(g[1:] for g in got) == want:
    return _map(tree, lambda v: np.asarray(v)[0])
  return tree


def _map(tree: Any, fn) -> Any:
  if isinstance(tree, Mapping):
    return {k: _map(v, fn) for k, v in tree.items()}
  return fn(tree)


@in_target_layout
def convert_flax_state(state: Mapping[str, Any], config: ml_collections.ConfigDict,
                       target: Any) -> ImportedCheckpoint:
  """Maps a restored score_sde ``State`` dict onto ``target``."""
  optimizer = state.get("optimizer")
  if not isinstance(optimizer, Mapping) or "target" not in optimizer or "step" not in state:
    raise CheckpointFormatError(
        "not a score_sde (JAX) checkpoint: expected a State with 'optimizer.target', "
        f"'params_ema' and 'step' (found {sorted(state)[:6]})")
  names = jax_names(nt.reference_layout(config.model, int(config.data.image_size)),
                    config.model.resblock_type)
  raw = _unreplicate(optimizer["target"], target)
  params, model_state = convert_flax_params(raw, names, target.params, target.model_state,
                                            "score_sde 'optimizer.target'")
  ema_params = None
  if state.get("params_ema") is not None:
    ema_params, _ = convert_flax_params(_unreplicate(state["params_ema"], target), names,
                                        target.params, target.model_state,
                                        "score_sde 'params_ema'")
  step = int(np.asarray(state["step"]).reshape(-1)[0])
  opt_state, note = None, "fresh optimizer state"
  opt = optimizer.get("state")
  if isinstance(opt, Mapping) and isinstance(opt.get("param_states"), Mapping) and \
      config.optim.optimizer in ("adam", "adamw"):
    moments = []
    for field in ("grad_ema", "grad_sq_ema"):
      tree = _map_leaf_dicts(opt["param_states"], field)
      if tree is None:
        break
      tree = {k: v for k, v in _unreplicate(tree, target).items()
              if not k.startswith("GaussianFourierProjection_")}
      moments.append(convert_flax_params(tree, names, target.params, None,
                                         "score_sde 'optimizer.state'")[0])
    if len(moments) == 2:
      count = int(np.asarray(opt.get("step", step)).reshape(-1)[0])
      opt_state = nt.optax_adam_state(target.opt_state, moments[0], moments[1], count, step)
      if opt_state is not None:
        check_tree(target.opt_state, opt_state, "score_sde 'optimizer.state'")
        note = f"Adam moments (step {count})"
  description = (f"score_sde (JAX) step {step}: optimizer.target -> params, "
                 + ("params_ema" if ema_params is not None else "params") + " -> ema_params, "
                 + note)
  return ImportedCheckpoint(params=params, ema_params=ema_params, model_state=model_state,
                            step=step, opt_state=opt_state, description=description)


def _map_leaf_dicts(tree: Any, field: str) -> Any:
  """flax.optim's per-leaf ``{"grad_ema", "grad_sq_ema"}`` dicts -> one field's tree."""
  if isinstance(tree, Mapping):
    if set(tree) == {"grad_ema", "grad_sq_ema"}:
      return tree[field]
    out = {}
    for k, v in tree.items():
      sub = _map_leaf_dicts(v, field)
      if sub is None:
        return None
      out[k] = sub
    return out
  return None


def read_flax_checkpoint(path: str) -> Mapping[str, Any]:
  """The state dict of a flax msgpack checkpoint (``flax.serialization.to_bytes``)."""
  from flax import serialization
  with open(path, "rb") as f:
    raw = f.read()
  try:
    state = serialization.msgpack_restore(raw)
  except Exception as e:  # noqa: BLE001  (msgpack raises several unrelated types)
    raise CheckpointFormatError(
        f"{path}: neither a torch file nor a flax msgpack checkpoint "
        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
  if not isinstance(state, Mapping):
    raise CheckpointFormatError(f"{path}: the msgpack does not hold a state dict")
  return state


def convert(path: str, config: ml_collections.ConfigDict, target: Any) -> ImportedCheckpoint:
  """Reads a score_sde PyTorch ``.pth`` or JAX ``checkpoint_<N>`` (no torch, no TF).

  Args:
    path: the file.
    config: an ``sgm`` NCSN++ config of a VP / sub-VP model with positional embedding.
    target: ``jax.eval_shape`` of the method's ``init_state``.

  Returns:
    The ``ImportedCheckpoint``.

  Raises:
    CheckpointFormatError: neither layout.
    ImportMismatchError: the model does not fit the config (one line).
  """
  check_config(config)
  if _is_torch_file(path):
    obj = cld_sgm.read_training_file(path, "score_sde_pytorch")
    return cld_sgm.convert_training_file(obj, config, target, "score_sde_pytorch",
                                         buffers=TORCH_BUFFERS)
  return convert_flax_state(read_flax_checkpoint(path), config, target)
