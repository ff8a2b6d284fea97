"""The optimizer states of an NVlabs/LSGM checkpoint -> this project's LSGM ``opt_state``.

The reference's files hold torch optimizer ``state_dict()``s: ``param_groups[*]["params"]``
lists the index of each parameter in ``module.parameters()`` order (the state-dict order
without buffers and without a Parameter registered twice), ``state[index]`` its entry.
This project's LSGM optimizer (``methods.lsgm.LSGM.make_optimizer``) is an
``optax.multi_transform`` with one partition per model, ``"vae"`` (``config.optim``) and,
in the joint stage, ``"score"`` (``config.lsgm.dae_optim``); each partition's chain holds
one ``ScaleByAdamState`` (count, mu, nu) and a ``ScaleByScheduleState``.

What maps, per partition:

* ``vae_optimizer`` of a stage-1 file (``thirdparty/adamax.py``'s Adamax: ``exp_avg``,
  ``exp_inf``, ``step``) -> the ``"vae"`` partition when ``config.optim.optimizer`` is
  ``adamax``: ``mu = exp_avg``, ``nu = exp_inf``, ``count = step`` (``optax.scale_by_adamax``
  keeps the same statistics: ``max(b2 * u, |g| + eps)``, bias correction of the first
  moment only).
* ``vae_optimizer`` / ``dae_optimizer`` of a joint file (torch Adam or apex FusedAdam:
  ``exp_avg``, ``exp_avg_sq``, ``step`` per parameter or per group) -> the ``"vae"`` /
  ``"score"`` partition when the config's optimizer is ``adam`` or ``adamw``: ``mu =
  exp_avg``, ``nu = exp_avg_sq``, ``count = step``. The moments are the same statistics in
  both; the weight decay (L2 or decoupled) is the config's. The EMA's ``state[i]["ema"]``
  in the same entries goes to ``ema_params`` (``lsgm_score``), not here.
* Tensors are reshaped as the weights they belong to (the NVAE / score-model mapping of
  ``lsgm_format`` / ``lsgm_score``; scanned NCSN++ blocks by ``in_target_layout``).
  Every ``ScaleByScheduleState`` gets the file's ``global_step`` (the schedules are
  functions of the step).

What does not: another optimizer kind than the config's (e.g. the file's Adamax state
under ``config.optim.optimizer=adam``), AMSGrad's ``max_exp_avg_sq``, per-parameter step
counts that differ, a partition the config freezes (``lsgm.train_vae=False``), the file's
learning-rate schedulers and AMP ``grad_scalar`` (the config's schedule and precision
apply). Such a partition starts fresh (zero moments, count 0) with a one-line warning; a
parameter without an entry (never given a gradient) gets zero moments. When no partition
converts (or the file's states are empty: never stepped) the importer returns no optimizer
state and the driver builds the fresh one, as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax
from absl import logging

from lsgm_jax.checkpoint_import import ImportMismatchError, check_tree

# Our optimizer names that keep each file kind's statistics.
COMPATIBLE = {"adamax": ("adamax",), "adam": ("adam", "adamw")}
_KIND_NAMES = {"adamax": "Adamax", "adam": "Adam"}


def entries_by_name(opt: Any, names: list[str], what: str
                    ) -> tuple[dict[str, Any], list[Mapping]] | None:
  """(parameter name -> its ``state`` entry or None, the param groups) of a torch optimizer
  state dict whose ``param_groups`` index ``names`` (``module.parameters()`` order); None
  when the dict holds no indexed parameters."""
  if not isinstance(opt, Mapping) or not isinstance(opt.get("state"), Mapping):
    return None
  groups = [g for g in opt.get("param_groups") or [] if isinstance(g, Mapping)]
  order = [i for g in groups for i in g.get("params", [])]
  if not order:
    return None
  if len(order) != len(names):
    raise ImportMismatchError(f"{what}: the optimizer holds {len(order)} parameters, the "
                              f"model {len(names)}")
  state = opt["state"]
  return {name: state.get(idx) for name, idx in zip(names, order)}, groups


@dataclasses.dataclass
class Moments:
  """One file optimizer's statistics as state dicts (the model's key names)."""
  kind: str   # "adam" or "adamax"
  mu: dict[str, np.ndarray]
  nu: dict[str, np.ndarray]
  count: int


def read_moments(opt: Any, state_dict: Mapping[str, np.ndarray], names: list[str],
                 what: str) -> tuple[Moments | None, str]:
  """(the file optimizer's moments, "") or (None, why not) for the ``names`` parameters
  of ``state_dict``; why is "" when the state is merely empty (never stepped)."""
  found = entries_by_name(opt, names, what)
  if found is None:
    return None, ""
  entries, groups = found
  present = {n: e for n, e in entries.items() if isinstance(e, Mapping) and "exp_avg" in e}
  if not present:  # never stepped (an EMA's "ema" alone is no optimizer moment)
    return None, ""
  kinds = {"adamax" if "exp_inf" in e else "adam" if "exp_avg_sq" in e else "?"
           for e in present.values()}
  if len(kinds) != 1 or "?" in kinds:
    return None, "its per-parameter entries are not all Adam or all Adamax moments"
  kind = kinds.pop()
  if any(g.get("amsgrad") for g in groups):
    return None, "AMSGrad's max_exp_avg_sq has no counterpart in optax"
  group_steps = {int(np.asarray(g["step"])) for g in groups if "step" in g}
  steps = {int(np.asarray(e["step"])) for e in present.values() if "step" in e}
  steps = steps or group_steps
  if len(steps) != 1:
    return None, f"its parameters' step counts differ ({sorted(steps)[:4]})"
  second = "exp_inf" if kind == "adamax" else "exp_avg_sq"
  mu, nu = {}, {}
  for name in names:
    like = np.shape(state_dict[name])
    entry = present.get(name)
    if entry is None:  # never given a gradient: torch's state would be zeros too
      mu[name] = nu[name] = np.zeros(like, np.float32)
      continue
    mu[name], nu[name] = np.asarray(entry["exp_avg"]), np.asarray(entry[second])
    if mu[name].shape != like or nu[name].shape != like:
      raise ImportMismatchError(f"{what}: the moments of {name} have shape {mu[name].shape}, "
                                f"the parameter {like}")
  return Moments(kind, mu, nu, steps.pop()), ""


@dataclasses.dataclass
class Partition:
  """What the importer knows of one optimizer partition (``"vae"`` or ``"score"``)."""
  opt: Any                     # the file's optimizer state dict
  state_dict: Mapping[str, np.ndarray]
  names: list[str]             # the model's parameters, ``parameters()`` order
  to_tree: Callable[[dict[str, np.ndarray], str], Any]  # state dict -> params-shaped tree
  optimizer: str | None        # the config's optimizer; None: frozen (no moments)
  field: str                   # the config field, for messages


def _zeros(tree: Any) -> Any:
  return jax.tree.map(lambda t: np.zeros(t.shape, t.dtype), tree)


def _fill(inner: Any, part: str, found: tuple[Any, Any, int] | None, step: int) -> Any | None:
  """One partition's optax state with the converted (or zero) moments; None when it holds
  a state kind this importer does not know."""
  ok = True

  def one(node):
    nonlocal ok
    if isinstance(node, optax.ScaleByAdamState):
      mu, nu, count = found if found is not None else (
          _zeros(node.mu[part]), _zeros(node.nu[part]), 0)
      return optax.ScaleByAdamState(count=np.asarray(count, node.count.dtype),
                                    mu=dict(node.mu, **{part: mu}),
                                    nu=dict(node.nu, **{part: nu}))
    if isinstance(node, optax.ScaleByScheduleState):
      return optax.ScaleByScheduleState(count=np.asarray(step, node.count.dtype))
    if isinstance(node, (optax.EmptyState, optax.MaskedNode)):
      return node
    ok = False
    return node

  leafs = (optax.ScaleByAdamState, optax.ScaleByScheduleState, optax.EmptyState,
           optax.MaskedNode)
  out = jax.tree.map(one, inner, is_leaf=lambda n: isinstance(n, leafs) or hasattr(n, "shape"))
  return out if ok else None


def convert_optimizers(parts: dict[str, Partition], target_opt_state: Any, step: int,
                       path: str) -> tuple[Any | None, str]:
  """(``opt_state`` in the unrolled layout or None, a description) from the file's
  optimizers; a one-line warning per partition whose state does not carry over."""
  inner = getattr(target_opt_state, "inner_states", None)
  if not isinstance(inner, Mapping) or set(inner) != set(parts):
    logging.warning("%s: fresh optimizer state (the config's optimizer is not one "
                    "partition per model)", path)
    return None, "fresh optimizer state"
  converted: dict[str, tuple[Any, Any, int]] = {}
  notes = []
  for part, info in parts.items():
    what = f"{path} {part} optimizer"
    if info.optimizer is None:
      notes.append(f"{part}: frozen")
      continue
    moments, why = read_moments(info.opt, info.state_dict, info.names, what)
    if moments is not None and info.optimizer not in COMPATIBLE[moments.kind]:
      why = (f"the file's {_KIND_NAMES[moments.kind]} state has no counterpart in "
             f"{info.field}={info.optimizer}")
      moments = None
    if moments is None:
      if why:
        logging.warning("%s: fresh %s optimizer state: %s", path, part, why)
      notes.append(f"{part}: fresh ({why or 'empty in the file'})")
      continue
    mu, nu = (info.to_tree(sd, what) for sd in (moments.mu, moments.nu))
    converted[part] = (mu, nu, moments.count)
    notes.append(f"{part}: {_KIND_NAMES[moments.kind]} moments (step {moments.count})")
  if not converted:
    return None, "fresh optimizer state (" + "; ".join(notes) + ")"
  filled = {}
  for part, masked in inner.items():
    state = _fill(masked.inner_state, part, converted.get(part), step)
    if state is None:
      logging.warning("%s: fresh optimizer state (the config's %s optimizer keeps a state "
                      "other than Adam moments and a schedule)", path, part)
      return None, "fresh optimizer state"
    filled[part] = masked._replace(inner_state=state)
  opt_state = target_opt_state._replace(inner_states=filled)
  check_tree(target_opt_state, opt_state, f"{path} (optimizer state)")
  return opt_state, "optimizer: " + "; ".join(notes)
