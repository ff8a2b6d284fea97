"""Optimizers and learning-rate schedules built from ``config.optim``.

Gradient clipping is not part of the chain: the train step clips explicitly so that the
pre-clip global norm is available to the skip guard and to the logs.
"""

from __future__ import annotations

import ml_collections
import optax

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
) -> optax.GradientTransformation:
  """The optax optimizer for one parameter group (LSGM builds one per group)."""
  schedule = make_schedule(optim, num_train_steps)
  kwargs = dict(b1=float(optim.beta1), b2=float(optim.beta2), eps=float(optim.eps))
  if optim.optimizer == "adam":
    tx = optax.adam(schedule, **kwargs)
  elif optim.optimizer == "adamw":
    tx = optax.adamw(schedule, weight_decay=float(optim.weight_decay), **kwargs)
  elif optim.optimizer == "adamax":
    tx = optax.adamax(schedule, **kwargs)
  else:
    raise ValueError(
        f"config.optim.optimizer={optim.optimizer!r} is not one of {OPTIMIZERS}")
  if optim.optimizer != "adamw" and float(optim.weight_decay) > 0:
    tx = optax.chain(optax.add_decayed_weights(float(optim.weight_decay)), tx)
  return tx
