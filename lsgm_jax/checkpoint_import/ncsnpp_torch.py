"""The PyTorch NCSN++ state-dict layout (score_sde_pytorch / CLD-SGM ``models/ncsnpp.py``)
and its mapping onto ``models.ncsnpp.NCSNpp``'s flax tree. Shared by the ``cld_sgm`` and
``score_sde`` (PyTorch) formats, whose files are both ``{model, ema, optimizer, step}``.

The reference keeps every layer in one flat ``nn.ModuleList`` (``all_modules.<i>``) built
in a fixed order by its constructor; ``reference_layout`` replays that constructor for a
config and names each entry with the flax module that plays its role, so entry ``i`` maps
to one flax path. Leaves: ``Conv2d.weight`` OIHW -> ``kernel`` HWIO; ``Linear.weight``
(out, in) -> ``kernel`` (in, out); ``GroupNorm.weight`` -> ``scale``; ``NIN.W`` (in, out)
is already a flax kernel; ``b`` / ``bias`` -> ``bias``. The Gaussian Fourier
frequencies ``all_modules.0.W`` (a ``requires_grad=False`` Parameter) go to the model
state collection ``constants`` (``layers.FOURIER_COLLECTION``).

The EMA (``models/ema.py`` ``ExponentialMovingAverage.state_dict``) stores
``shadow_params``, a list over ``model.parameters()`` *with requires_grad*, so it is
matched to names by the order of the model's state dict (which for these models is the
order of ``parameters()``, buffers aside) with ``W`` skipped, shape by shape. torch
Adam's ``state`` is keyed by the index into ``model.parameters()`` (``W`` included).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax

from lsgm_jax.checkpoint_import import ImportMismatchError, check_tree, unconsumed
from lsgm_jax.models.layers import FOURIER_COLLECTION

DDP_PREFIX = "module."

# kind -> {torch child module: flax sub-path}; "" is the entry itself.
_CHILDREN: dict[str, dict[str, tuple[str, ...]]] = {
    "dense": {"": ()},
    "conv": {"": ()},
    "groupnorm": {"": ()},
    "resblock": {"GroupNorm_0": ("norm_0",), "Conv_0": ("conv_0",), "Dense_0": ("temb_proj",),
                 "GroupNorm_1": ("norm_1",), "Conv_1": ("conv_1",), "Conv_2": ("shortcut",),
                 "NIN_0": ("shortcut", "dense")},
    "attn": {"GroupNorm_0": ("norm",), "NIN_0": ("q", "dense"), "NIN_1": ("k", "dense"),
             "NIN_2": ("v", "dense"), "NIN_3": ("out", "dense")},
    "resample": {"Conv2d_0": ("conv",), "Conv_0": ("conv",)},
    "combine": {"Conv_0": ("conv",)},
    "fourier": {"": ()},
}


def reference_layout(model: Any, image_size: int) -> list[tuple[str, str]]:
  """``(flax module name, kind)`` of every ``all_modules`` entry, in the reference's order.

  Replays the constructor of score_sde_pytorch / CLD-SGM ``models/ncsnpp.py``
  (``NCSNpp.__init__``) for ``config.model`` (the fields ``registry._ncsnpp`` passes to
  ``NCSNpp``); the names are those ``NCSNpp.__call__`` gives the same layers.
  """
  layout: list[tuple[str, str]] = []
  if model.embedding_type == "fourier":
    layout.append(("fourier", "fourier"))
  layout += [("temb_0", "dense"), ("temb_1", "dense"), ("conv_in", "conv")]
  ch_mult, nrb = tuple(model.ch_mult), int(model.num_res_blocks)
  attn = tuple(model.attn_resolutions)
  biggan = model.resblock_type == "biggan"
  num_levels = len(ch_mult)
  for level in range(num_levels):
    resolution = image_size // 2 ** level
    for i in range(nrb):
      layout.append((f"down_{level}_block_{i}", "resblock"))
      if resolution in attn:
        layout.append((f"down_{level}_attn_{i}", "attn"))
    if level != num_levels - 1:
      layout.append((f"down_{level}_resample", "resblock" if biggan else "resample"))
      if model.progressive_input == "input_skip":
        layout.append((f"down_{level}_combine", "combine"))
      elif model.progressive_input == "residual":
        layout.append((f"down_{level}_pyramid", "resample"))
  layout += [("mid_block_0", "resblock"), ("mid_attn", "attn"), ("mid_block_1", "resblock")]
  for level in reversed(range(num_levels)):
    for i in range(nrb + 1):
      layout.append((f"up_{level}_block_{i}", "resblock"))
    if image_size // 2 ** level in attn:
      layout.append((f"up_{level}_attn", "attn"))
    if model.progressive != "none":
      head = f"up_{level}_pyramid_head"
      if level == num_levels - 1 or model.progressive == "output_skip":
        layout += [(f"{head}/norm", "groupnorm"), (f"{head}/conv", "conv")]
      else:  # residual, below the top level
        layout.append((f"up_{level}_pyramid", "resample"))
    if level != 0:
      layout.append((f"up_{level}_resample", "resblock" if biggan else "resample"))
  if model.progressive != "output_skip":
    layout += [("norm_out", "groupnorm"), ("conv_out", "conv")]
  return layout


def _flax_leaf(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
  if leaf in ("bias", "b"):
    return "bias", value
  if leaf == "W" and value.ndim == 2:  # NIN: already (in, out)
    return "kernel", value
  if leaf == "weight" and value.ndim == 4:  # Conv2d OIHW -> HWIO
    return "kernel", np.transpose(value, (2, 3, 1, 0))
  if leaf == "weight" and value.ndim == 2:  # Linear (out, in) -> (in, out)
    return "kernel", value.T
  if leaf == "weight" and value.ndim == 1:  # GroupNorm
    return "scale", value
  return None


def flax_path(key: str, value: np.ndarray, layout: Sequence[tuple[str, str]]
              ) -> tuple[str, tuple[str, ...], np.ndarray] | None:
  """``all_modules.<i>.<child>.<leaf>`` -> (collection, flax path, array), or None for
  a key with no place in the model (reported later as unconsumed)."""
  parts = key.split(".")
  if len(parts) < 3 or parts[0] != "all_modules" or not parts[1].isdigit():
    return None
  index = int(parts[1])
  if index >= len(layout):
    return None
  name, kind = layout[index]
  child, leaf = ".".join(parts[2:-1]), parts[-1]
  sub = _CHILDREN[kind].get(child)
  if sub is None:
    return None
  if kind == "fourier":
    return (FOURIER_COLLECTION, (name, "W"), value) if leaf == "W" and not child else None
  mapped = _flax_leaf(leaf, value)
  if mapped is None:
    return None
  return "params", tuple(name.split("/")) + sub + (mapped[0],), mapped[1]


def _nest(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The ``model`` state dict without DDP's ``module.`` prefix (arrays only)."""
  if not isinstance(state_dict, Mapping):
    raise ImportMismatchError("the file's 'model' entry is not a state dict")
  out = {}
  for key, value in state_dict.items():
    key = key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key
    out[key] = np.asarray(value)
  return out


def convert_model(state_dict: Mapping[str, np.ndarray], layout, target_params: Any,
                  target_model_state: Any, what: str, *, buffers: Sequence[str] = ()
                  ) -> tuple[dict, dict]:
  """(params, model_state) of a prefix-free state dict; every tensor must land and
  every target leaf be filled (one-line ``ImportMismatchError`` otherwise).

  ``buffers``: keys the reference derives from its config (score_sde's ``sigmas``);
  they are checked to exist and dropped.
  """
  params, constants, consumed = {}, {}, set()
  for key, value in state_dict.items():
    if key in buffers:
      consumed.add(key)
      continue
    mapped = flax_path(key, value, layout)
    if mapped is None:
      continue
    collection, path, array = mapped
    (params if collection == "params" else constants)[path] = array
    consumed.add(key)
  unconsumed(state_dict, consumed, what)
  params_tree = _nest(params)
  check_tree(target_params, params_tree, f"{what} (params)")
  model_state = {FOURIER_COLLECTION: _nest(constants)} if constants else {}
  check_tree(target_model_state, model_state, f"{what} (model state)")
  return (_cast_like(target_params, params_tree),
          _cast_like(target_model_state, model_state))


def _cast_like(target: Any, tree: Any) -> Any:
  """``tree``'s arrays in ``target``'s dtypes; views stay views (no copy of a paper-size
  model until the driver places it on devices)."""
  return jax.tree.map(lambda t, x: x if x.dtype == t.dtype else x.astype(t.dtype),
                      target, tree)


def trainable_keys(state_dict: Mapping[str, np.ndarray], layout,
                   buffers: Sequence[str] = ()) -> list[str]:
  """Keys of ``model.parameters()`` with ``requires_grad``, in order (no Fourier W)."""
  out = []
  for key in state_dict:
    if key in buffers:
      continue
    mapped = flax_path(key, state_dict[key], layout)
    if mapped is not None and mapped[0] == FOURIER_COLLECTION:
      continue
    out.append(key)
  return out


def parameter_keys(state_dict: Mapping[str, np.ndarray], buffers: Sequence[str] = ()
                   ) -> list[str]:
  """Keys of ``model.parameters()`` in order (Fourier W included, buffers not)."""
  return [k for k in state_dict if k not in buffers]


def ema_state_dict(ema: Any, state_dict: Mapping[str, np.ndarray], layout,
                   buffers: Sequence[str] = ()) -> dict[str, np.ndarray] | None:
  """The EMA's shadow params as a state dict (``W`` copied from the model), or None
  when the file has no EMA; one line if the list does not fit the model."""
  if ema is None:
    return None
  shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
  if not isinstance(shadow, (list, tuple)):
    raise ImportMismatchError("the file's 'ema' entry has no shadow_params list")
  keys = trainable_keys(state_dict, layout, buffers)
  if len(shadow) != len(keys):
    raise ImportMismatchError(
        f"ema.shadow_params has {len(shadow)} tensors but the model has {len(keys)} "
        "trainable ones")
  out = dict(state_dict)
  for key, value in zip(keys, shadow):
    value = np.asarray(value)
    if value.shape != state_dict[key].shape:
      raise ImportMismatchError(
          f"ema.shadow_params entry for {key} has shape {value.shape}, the model tensor "
          f"{state_dict[key].shape} (shadow list out of model.parameters() order)")
    out[key] = value
  return out


def adam_moments(optimizer: Any, state_dict: Mapping[str, np.ndarray], layout,
                 buffers: Sequence[str] = ()
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int] | None:
  """(exp_avg, exp_avg_sq as state dicts, Adam step) of a torch Adam / AdamW (or apex
  FusedAdam) state dict, or None if it is not one whole-model Adam state."""
  if not isinstance(optimizer, Mapping):
    return None
  state, groups = optimizer.get("state"), optimizer.get("param_groups")
  if not isinstance(state, Mapping) or not isinstance(groups, (list, tuple)) or len(groups) != 1:
    return None
  group = groups[0]
  if group.get("amsgrad") or list(group.get("params", [])) != list(
      range(len(parameter_keys(state_dict, buffers)))):
    return None
  index = {k: i for i, k in enumerate(parameter_keys(state_dict, buffers))}
  mu, nu, steps = {}, {}, set()
  for key in trainable_keys(state_dict, layout, buffers):
    entry = state.get(index[key])
    if not isinstance(entry, Mapping) or "exp_avg" not in entry or "exp_avg_sq" not in entry:
      return None
    mu[key], nu[key] = np.asarray(entry["exp_avg"]), np.asarray(entry["exp_avg_sq"])
    if mu[key].shape != state_dict[key].shape or nu[key].shape != state_dict[key].shape:
      return None
    steps.add(int(np.asarray(entry.get("step", group.get("step", -1)))))
  if len(steps) != 1 or min(steps) < 0:
    return None
  return mu, nu, steps.pop()


def optax_adam_state(target_opt_state: Any, mu: Any, nu: Any, count: int, step: int
                     ) -> Any | None:
  """``target_opt_state`` (abstract) filled from Adam moments: ``ScaleByAdamState``
  gets (count, mu, nu), schedule counters the file's step; None if the optimizer has
  any other state (then a fresh one is used).

  torch's Adam and optax's ``scale_by_adam`` keep the same statistics (first and second
  moments, bias correction by the step count, eps outside the square root).
  """
  ok = True

  def fill(node):
    nonlocal ok
    if isinstance(node, optax.ScaleByAdamState):
      return optax.ScaleByAdamState(count=np.asarray(count, node.count.dtype), mu=mu, nu=nu)
    if isinstance(node, optax.ScaleByScheduleState):
      return optax.ScaleByScheduleState(count=np.asarray(step, node.count.dtype))
    if isinstance(node, (optax.EmptyState,)):
      return node
    ok = False
    return node

  def is_state(node):
    return isinstance(node, (optax.ScaleByAdamState, optax.ScaleByScheduleState,
                             optax.EmptyState)) or hasattr(node, "shape")

  filled = jax.tree.map(fill, target_opt_state, is_leaf=is_state)
  return filled if ok else None
