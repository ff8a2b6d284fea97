"""Runs of identical residual blocks as one ``nn.scan``, and the parameter layouts.

``model.scan_blocks`` (on by default) makes NCSN++ and the DDPM U-Net run every maximal
run of consecutive residual blocks whose inputs have the same shape as one ``nn.scan``
over a stacked parameter tree: the same network and parameter count, far fewer block
bodies for XLA to compile. The parameter tree then holds one entry per run (its blocks'
``block`` / ``attn`` subtrees stacked on axis 0) where the unrolled model has one per
block. This module builds the runs (``runs``, ``scanned_run``) and converts between the
two layouts (``to_unrolled_params``, ``to_scanned_params``, and for whole trains states
``unrolled_layout`` / ``scanned_layout``), which the checkpoint importers use: the
references' files are in the unrolled layout.

Run names and the unrolled names of their members:

* NCSN++: ``{down,up}_{level}_scan_{first}`` -> ``{down,up}_{level}_{part}_{first + j}``.
* U-Net: ``unet_scan_{b}_{a}`` -> ``ResnetBlockDDPM_{b + j}`` and ``AttnBlock_{a + j}``
  (the unrolled U-Net keeps flax's automatic names, so its checkpoints stay readable).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def runs(keys: Sequence[Any], scan: bool) -> list[tuple[int, int]]:
  """``[start, stop)`` of the maximal runs of equal consecutive ``keys`` (one block
  each when ``scan`` is off): the blocks that one scanned body can run."""
  out: list[tuple[int, int]] = []
  for i, key in enumerate(keys):
    if scan and out and keys[out[-1][0]] == key:
      out[-1] = (out[-1][0], i + 1)
    else:
      out.append((i, i + 1))
  return out


class RunStep(nn.Module):
  """One step of a scanned run of residual blocks: ``[h, skip]`` -> block -> attention.

  Its submodules are named ``block`` and ``attn``, so a run's parameters are the
  unrolled blocks' stacked on a leading axis (see ``to_scanned_params``).
  """

  block_cls: Any
  attn_cls: Any
  block_kwargs: dict[str, Any]
  attn_kwargs: dict[str, Any] | None  # None: no attention after the block
  train: bool
  emit: bool  # also return h as the scan output (the down path's skip connections)

  @nn.compact
  def __call__(self, h: Array, skip: Array | None, temb: Array
               ) -> tuple[Array, Array | None]:
    if skip is not None:
      h = jnp.concatenate([h, skip], axis=-1)
    h = self.block_cls(**self.block_kwargs, name="block")(h, temb, self.train)
    if self.attn_kwargs is not None:
      h = self.attn_cls(**self.attn_kwargs, name="attn")(h)
    return h, (h if self.emit else None)


def scanned_run(length: int) -> Any:
  """``RunStep`` scanned ``length`` times: params stacked on axis 0, a fresh
  parameter-init and dropout key per block, ``temb`` shared by all."""
  return nn.scan(RunStep, variable_axes={"params": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(0, nn.broadcast), length=length)


# ----------------------------------------------------- scanned <-> unrolled parameters

def _ncsnpp_member(match: re.Match, part: str, j: int) -> str:
  path, level, first = match.groups()
  return f"{path}_{level}_{part}_{int(first) + j}"


def _unet_member(match: re.Match, part: str, j: int) -> str:
  block, attn = int(match.group(1)), int(match.group(2))
  return f"ResnetBlockDDPM_{block + j}" if part == "block" else f"AttnBlock_{attn + j}"


# (run-name pattern, the unrolled name of part ``block``/``attn`` of the run's block j)
_NAMINGS: tuple[tuple[re.Pattern, Callable[[re.Match, str, int], str]], ...] = (
    (re.compile(r"^(down|up)_(\d+)_scan_(\d+)$"), _ncsnpp_member),
    (re.compile(r"^unet_scan_(\d+)_(\d+)$"), _unet_member),
)
# A scanned block's part inside a ``jax.tree_util.keystr`` key (the spectral
# regulariser's power vectors are keyed by kernel path).
_SCAN_KEYSTR = re.compile(r"\['([A-Za-z0-9_]*_scan_[0-9_]*)'\]\['(block|attn)'\]")


def unet_run_name(first_block: int, first_attn: int) -> str:
  """The U-Net's name of a run starting at its ``first_block``-th residual block and
  ``first_attn``-th attention block (flax's automatic numbering of the unrolled model)."""
  return f"unet_scan_{first_block}_{first_attn}"


def _run_match(name: Any) -> tuple[re.Match, Callable[[re.Match, str, int], str]] | None:
  if not isinstance(name, str):
    return None
  for pattern, member in _NAMINGS:
    match = pattern.match(name)
    if match is not None:
      return match, member
  return None


def _take(a: Any, j: int) -> Any:
  """Block ``j`` of a stacked leaf (an array, or a ``jax.ShapeDtypeStruct``'s shape)."""
  if isinstance(a, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
  return a[j]


def _stack(leaves: Sequence[Any]) -> Any:
  """The leaves stacked on a new axis 0 (NumPy stays on the host, anything else is jnp;
  ``jax.ShapeDtypeStruct`` leaves give the stacked shape)."""
  if all(isinstance(a, jax.ShapeDtypeStruct) for a in leaves):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype)
  if all(isinstance(a, np.ndarray) for a in leaves):
    return np.stack(leaves)
  return jnp.stack([jnp.asarray(a) for a in leaves])


def to_unrolled_params(params: dict[str, Any]) -> dict[str, Any]:
  """A network's ``params`` tree in the ``scan_blocks=False`` layout.

  Every scanned run (``block`` and, where the run attends, ``attn`` subtrees stacked on
  axis 0) becomes one entry per block under the unrolled names (module docstring);
  everything else is passed through.

  Args:
    params: the ``"params"`` collection of an NCSN++ or U-Net (either layout; array or
      ``jax.ShapeDtypeStruct`` leaves), or any tree shaped like it (an EMA, Adam's
      moments).

  Returns:
    The same arrays (sliced) under the unrolled names.
  """
  out: dict[str, Any] = {}
  for name, sub in params.items():
    found = _run_match(name)
    if found is None:
      out[name] = sub
      continue
    match, member = found
    length = jax.tree.leaves(sub)[0].shape[0]
    for j in range(length):
      for part in ("block", "attn"):
        if part in sub:
          out[member(match, part, j)] = jax.tree.map(lambda a, j=j: _take(a, j), sub[part])
  return out


def to_scanned_params(params: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
  """An unrolled ``params`` tree in the layout of ``like``.

  The runs to stack are read from ``like`` (which blocks a run holds depends on the
  input's channel count and resolution, so the names alone do not fix it). ``params``
  may also be scanned already (it is unrolled first).

  Args:
    params: the ``"params"`` collection, unrolled (``scan_blocks=False``) or scanned.
    like: the target layout, e.g. ``jax.eval_shape(model.init, ...)["params"]`` of the
      ``scan_blocks=True`` model (arrays or ``jax.ShapeDtypeStruct`` leaves).

  Returns:
    ``params`` with each run's blocks stacked on axis 0.

  Raises:
    ValueError: a parameter missing, left over or of another shape than in ``like``.
  """
  params = to_unrolled_params(params)
  out: dict[str, Any] = {}
  used: set[str] = set()
  for name, target in like.items():
    found = _run_match(name)
    if found is None:
      if name not in params:
        raise ValueError(f"to_scanned_params: {name!r} missing from the params")
      out[name] = params[name]
      used.add(name)
      continue
    match, member = found
    length = jax.tree.leaves(target)[0].shape[0]
    out[name] = {}
    for part in target:
      names = [member(match, part, j) for j in range(length)]
      missing = [n for n in names if n not in params]
      if missing:
        raise ValueError(f"to_scanned_params: {missing[0]!r} (for {name}/{part}) missing "
                         "from the params")
      out[name][part] = jax.tree.map(lambda *a: _stack(a), *[params[n] for n in names])
      used.update(names)
  extra = sorted(set(params) - used)
  if extra:
    raise ValueError(f"to_scanned_params: {extra[0]!r} has no place in the target layout")
  got = jax.tree_util.tree_flatten_with_path(out)[0]
  want = jax.tree_util.tree_flatten_with_path(like)[0]
  if [k for k, _ in got] != [k for k, _ in want]:
    raise ValueError("to_scanned_params: the parameter names differ from the target's")
  for (key, a), (_, b) in zip(got, want):
    if tuple(a.shape) != tuple(b.shape):
      raise ValueError(f"to_scanned_params: {jax.tree_util.keystr(key)} has shape "
                       f"{tuple(a.shape)}, the target {tuple(b.shape)}")
  return out


def _keystr_run(key: str) -> tuple[re.Match, re.Match, Callable] | None:
  """(the keystr match, the run-name match, its member naming) of a power-vector key
  inside a scanned run, or None."""
  match = _SCAN_KEYSTR.search(key)
  found = _run_match(match.group(1)) if match else None
  return None if found is None else (match, *found)


def _member_key(key: str, where: tuple[re.Match, re.Match, Callable], j: int) -> str:
  match, run, member = where
  return key[:match.start()] + f"['{member(run, match.group(2), j)}']" + key[match.end():]


def _is_scanned_level(x: Any) -> bool:
  """A dict holding a network's top-level modules with at least one scanned run, or a
  dict of spectral power vectors keyed by such a model's kernel paths."""
  return isinstance(x, dict) and any(
      _run_match(k) is not None or (isinstance(k, str) and _keystr_run(k) is not None)
      for k in x)


def _is_vectors(x: dict[str, Any]) -> bool:
  return any(isinstance(k, str) and _keystr_run(k) is not None for k in x)


def _unrolled_vectors(vectors: dict[str, Any]) -> dict[str, Any]:
  """Power vectors keyed by scanned kernel paths -> one entry per block."""
  out: dict[str, Any] = {}
  for key, value in vectors.items():
    where = _keystr_run(key)
    if where is None:
      out[key] = value
      continue
    length = jax.tree.leaves(value)[0].shape[0]
    for j in range(length):
      out[_member_key(key, where, j)] = jax.tree.map(lambda a, j=j: _take(a, j), value)
  return out


def _scanned_vectors(vectors: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
  """Power vectors of the unrolled model in the scanned keys of ``like``."""
  vectors = _unrolled_vectors(vectors)
  out: dict[str, Any] = {}
  for key, target in like.items():
    where = _keystr_run(key)
    if where is None:
      out[key] = vectors[key]
      continue
    length = jax.tree.leaves(target)[0].shape[0]
    names = [_member_key(key, where, j) for j in range(length)]
    out[key] = jax.tree.map(lambda *a: _stack(a), *[vectors[n] for n in names])
  return out


def unrolled_layout(tree: Any) -> Any:
  """``tree`` with every scanned parameter level in the unrolled layout.

  ``tree`` is any pytree that holds NCSN++ / U-Net parameter trees somewhere (a
  ``TrainState``, its abstract ``jax.eval_shape``, an optimizer state whose moments are
  shaped like the parameters, LSGM's ``{"vae", "score"}``): each dict with scanned-run
  keys goes through ``to_unrolled_params``, each dict of spectral power vectors keyed by
  such paths is split per block; everything else is passed through. The checkpoint
  importers map a reference's file onto this layout (the references' own).
  """
  def one(x: Any) -> Any:
    if not _is_scanned_level(x):
      return x
    return _unrolled_vectors(x) if _is_vectors(x) else to_unrolled_params(x)
  return jax.tree.map(one, tree, is_leaf=_is_scanned_level)


def scanned_layout(tree: Any, like: Any) -> Any:
  """``tree`` (in ``unrolled_layout(like)``'s layout) in the layout of ``like``.

  The inverse of ``unrolled_layout``: each scanned parameter level of ``like`` is filled
  by ``to_scanned_params`` from ``tree``'s unrolled level at the same place (and power
  vectors stacked per run). With no scanned level in ``like``, ``tree`` is returned as is.

  Raises:
    ValueError: ``tree`` does not have ``like``'s structure outside the scanned levels,
      or a scanned level cannot be filled (see ``to_scanned_params``).
  """
  if _is_scanned_level(like):
    if _is_vectors(like):
      return _scanned_vectors(tree, like)
    return to_scanned_params(tree, like=like)
  if not any(_is_scanned_level(x)
             for x in jax.tree.leaves(like, is_leaf=_is_scanned_level)):
    return tree  # untouched, the same object (an EMA may share subtrees with params)
  if isinstance(like, dict) and isinstance(tree, dict):
    if set(like) != set(tree):
      raise ValueError(f"scanned_layout: keys {sorted(tree)} where {sorted(like)} expected")
    return {k: scanned_layout(v, like[k]) for k, v in tree.items()}
  # Any other container (optax states, tuples): one level down, rebuilt.
  children, treedef = jax.tree_util.tree_flatten(like, is_leaf=lambda n: n is not like)
  return treedef.unflatten([scanned_layout(x, target) for x, target in
                            zip(treedef.flatten_up_to(tree), children)])
