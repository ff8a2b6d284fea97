"""NVAE's KL warm-up and KL balancing (NVAE paper Sec. 3.2 / appendix; LSGM reuses both).

* Warm-up: the KL term is multiplied by a coefficient that grows linearly from
  ``min_coeff`` to ``max_coeff`` over ``total_steps`` after ``constant_steps`` at the minimum
  (NVlabs/LSGM ``util/utils.py`` ``kl_coeff``). LSGM's stage 1 runs it from ~0 to
  ``kl_max_coeff`` and, with ``--cont_kl_anneal``, stage 2 continues from
  ``kl_const_coeff_vada`` (the value where stage 1 stopped) to 1.
* Balancing: while the coefficient is below 1, each group's KL is reweighted in
  proportion to its batch-mean size divided by ``alpha_i`` (smaller groups get a larger
  share of the pressure, so no group collapses early); the weights average to 1 and carry
  no gradient.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BALANCE_FUNS = ("equal", "linear", "sqrt", "square")


def kl_coeff(step: jax.Array, total_steps: float, constant_steps: float, min_coeff: float,
             max_coeff: float) -> jax.Array:
  """min_coeff + (max - min) (step - constant_steps) / total_steps, clipped to [min, max]."""
  step = jnp.asarray(step, jnp.float32)
  ramp = min_coeff + (max_coeff - min_coeff) * (step - constant_steps) / max(total_steps, 1e-8)
  return jnp.clip(ramp, min_coeff, max_coeff)


def kl_balancer_coeff(num_scales: int, groups_per_scale: Sequence[int],
                      fun: str = "square") -> np.ndarray:
  """alpha_i per group in decoder order (coarsest scale first), normalised to min 1.

  ``groups_per_scale`` lists the finest scale first (``NVAEConfig.groups_per_scale``).
  LSGM always uses ``square``: 4^i / (groups at scale i) for the i-th coarsest scale.
  """
  if fun not in BALANCE_FUNS:
    raise ValueError(f"fun must be one of {BALANCE_FUNS}, got {fun!r}")
  coeffs = []
  for i in range(num_scales):
    n = groups_per_scale[num_scales - i - 1]
    value = {"equal": 1.0, "linear": 2.0 ** i, "sqrt": np.sqrt(2.0 ** i),
             "square": (2.0 ** i) ** 2 / n}[fun]
    coeffs += [value] * n
  coeffs = np.asarray(coeffs, np.float64)
  return (coeffs / coeffs.min()).astype(np.float32)


class BalancedKL(NamedTuple):
  """``kl``: [B] coefficient x (balanced) KL; ``group_coeffs``: [G]; ``group_kl``: [G] means."""

  kl: jax.Array
  group_coeffs: jax.Array
  group_kl: jax.Array


def kl_balancer(kl_all: jax.Array, coeff: jax.Array, balance: bool,
                alpha: np.ndarray | jax.Array) -> BalancedKL:
  """The KL term of the training loss (NVAE KL balancing, LSGM ``utils.kl_balancer``).

  Args:
    kl_all: ``[B, G]`` KL per example and group.
    coeff: the warm-up coefficient (scalar).
    balance: apply balancing (only while ``coeff < 1``, as the reference).
    alpha: ``[G]`` from ``kl_balancer_coeff``.

  Returns:
    ``BalancedKL``; ``kl`` equals ``coeff * sum_g kl_all`` when not balancing.
  """
  group_kl = jnp.mean(kl_all, axis=0)
  plain = jnp.sum(kl_all, axis=1)
  ones = jnp.ones_like(group_kl)
  if not balance:
    return BalancedKL(coeff * plain, ones, group_kl)
  weights = jnp.mean(jnp.abs(kl_all), axis=0) + 0.01
  weights = weights / jnp.asarray(alpha, kl_all.dtype) * jnp.sum(weights)
  weights = jax.lax.stop_gradient(weights / jnp.mean(weights))
  balanced = jnp.sum(kl_all * weights[None], axis=1)
  active = coeff < 1.0
  return BalancedKL(coeff * jnp.where(active, balanced, plain),
                    jnp.where(active, weights, ones), group_kl)
