"""Optimizers and learning-rate schedules built from ``config.optim``.

Gradient clipping is not part of the chain: the train step clips explicitly so that the
pre-clip global norm is available to the skip guard and to the logs.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any

OPTIMIZERS = ("adam", "adamw", "adamax")
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(optim: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then the decay schedule."""
  lr, warmup = float(optim.lr), int(optim.warmup_steps)
  decay_steps = max(int(num_train_steps) - warmup, 1)
  if optim.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif optim.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(optim.min_lr_ratio))
  elif optim.schedule == "linear":
    after = optax.linear_schedule(lr, lr * float(optim.min_lr_ratio), decay_steps)
  else:
    raise ValueError(
        f"config.optim.schedule={optim.schedule!r} is not one of {SCHEDULES}")
  if warmup <= 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), after], boundaries=[warmup])


def make_optimizer(
    optim: ml_collections.ConfigDict, num_train_steps: int
) -> optax.GradientTransformation | GuardedAdam:
  """The optax optimizer for one parameter group (LSGM builds one per group); Adam and
  AdamW come as ``GuardedAdam`` (their optax selves plus an in-place guarded update)."""
  schedule = make_schedule(optim, num_train_steps)
  kwargs = dict(b1=float(optim.beta1), b2=float(optim.beta2), eps=float(optim.eps))
  if optim.optimizer == "adam" and float(optim.weight_decay) == 0:
    return guarded_adam(schedule, weight_decay=None, **kwargs)
  if optim.optimizer == "adamw":
    return guarded_adam(schedule, weight_decay=float(optim.weight_decay), **kwargs)
  if optim.optimizer == "adam":
    tx = optax.adam(schedule, **kwargs)
  elif optim.optimizer == "adamax":
    tx = optax.adamax(schedule, **kwargs)
  else:
    raise ValueError(
        f"config.optim.optimizer={optim.optimizer!r} is not one of {OPTIMIZERS}")
  if optim.optimizer != "adamw" and float(optim.weight_decay) > 0:
    tx = optax.chain(optax.add_decayed_weights(float(optim.weight_decay)), tx)
  return tx


class GuardedAdam(NamedTuple):
  """``optax.adam`` / ``optax.adamw`` (the same ``init``, ``update`` and state pytree, so
  checkpoints and imports see no difference) plus ``apply_if``: the whole guarded update
  ``(grads, opt_state, params, ok) -> (params, opt_state)`` in which a step with ``ok``
  false leaves every leaf and counter unchanged (the train step's skip guard).

  ``apply_if`` computes the same numbers as ``tx.update`` + ``optax.apply_updates`` + a
  per-leaf ``where(ok, new, old)``, in an order that lets XLA update donated buffers in
  place: the moments are selected first and the parameter update reads the selected
  moments. With ``materialize`` (XLA:CPU, which has no multi-output fusion) optimization
  barriers make each new leaf one in-place kernel; otherwise the backend fuses freely.
  Written as optax writes it, the CPU step copies the moments and parameters out of the
  way (1.2 GiB per step for the paper NCSN++; BENCHMARKS.md). Bit-for-bit equality with
  optax is tested on CPU; elsewhere the backend's own fusion may round differently.
  """

  init: Callable[[PyTree], PyTree]
  update: Callable[..., tuple[PyTree, PyTree]]
  apply_if: Callable[..., tuple[PyTree, PyTree]]


def guarded_adam(schedule: optax.Schedule, *, b1: float, b2: float, eps: float,
                 weight_decay: float | None) -> GuardedAdam:
  """Adam (Kingma & Ba 2015, Alg. 1) with bias correction, or AdamW's decoupled weight
  decay (Loshchilov & Hutter 2019) when ``weight_decay`` is not None; learning rate
  ``schedule(count)``."""
  if not callable(schedule):  # apply_if reads the count of optax's ScaleByScheduleState
    raise TypeError(f"guarded_adam needs a learning-rate schedule, got {schedule!r}")
  if weight_decay is None:
    tx = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  else:
    tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)

  def apply_if(grads: PyTree, opt_state: PyTree, params: PyTree, ok: jax.Array, *,
               materialize: bool = False) -> tuple[PyTree, PyTree]:
    adam, *rest, sched = opt_state
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(ok, n.astype(o.dtype), o), new, old)
    barrier = jax.lax.optimization_barrier if materialize else (lambda x: x)
    # optax.scale_by_adam's moments, selected before anything reads them.
    mu = keep(optax.tree.update_moment(grads, adam.mu, b1, 1), adam.mu)
    nu = keep(optax.tree.update_moment_per_elem_norm(grads, adam.nu, b2, 2), adam.nu)
    mu, nu = barrier((mu, nu))
    count = optax.safe_increment(adam.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    step_size = -1 * schedule(sched.count)  # optax.scale_by_learning_rate

    def new_param(p, m, v):
      u = m / (jnp.sqrt(v) + eps)
      if weight_decay:  # optax.add_decayed_weights (a zero decay is skipped there too)
        u = u + weight_decay * p
      u = jnp.array(step_size, dtype=u.dtype) * u
      return jnp.where(ok, jnp.asarray(p + u).astype(p.dtype), p)

    new_params = jax.tree.map(new_param, params, mu_hat, nu_hat)
    new_state = (adam._replace(count=jnp.where(ok, count, adam.count), mu=mu, nu=nu),
                 *rest,
                 sched._replace(count=jnp.where(ok, optax.safe_increment(sched.count),
                                                sched.count)))
    return barrier(new_params), new_state

  return GuardedAdam(tx.init, tx.update, apply_if)
