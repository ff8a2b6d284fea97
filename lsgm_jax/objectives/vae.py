"""KL scheduling of the latent VAE's deep VAE as pure functions of arrays.

The latent VAE paper (appendix B, "To prevent posterior collapse, we use the
KL-scheduling technique from Luhman & Luhman (2022) which encourages a designated amount
of KL to be used in each latent layer") allots every stochastic layer a share of the
image's total KL. The shares follow a *shifted-exponential rate schedule* over the
layers (top, lowest resolution, first):

    r_l = exp(l / (L - 1) * log(scale)) + shift,   l = 0, ..., L - 1
    share_l = total_percent * r_l / sum_k r_k      (percent of the total KL)

(authors' code: ``general_utils.get_rate_schedule``, ``("shifted_exp", {"scale": 1000,
"shift": 10})`` for Church / ImageNet, scale 2000 for Bedroom; the shares sum to 66.7%).

Each layer's KL is then multiplied by a piecewise-linear, gradient-free weight of how
its KL compares with its allotment a = share_l% and b = 2 share_l% of the example's total
KL (``jax_utils.calc_weight_for_kl``): below a the weight is KL / a (a layer using less
than its share is penalised less, so it is encouraged to carry information), 1 on
[a, b), rising linearly to 2 on [b, a + b), 2 above; never below 0.1.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

Array = jax.Array

KL_SCHEDULES = ("shifted_exp", "none")
MIN_WEIGHT = 0.1  # the weight never reaches 0 (authors' code)


def shifted_exp_rates(num_layers: int, scale: float = 1000.0, shift: float = 10.0,
                      total_percent: float = 66.7) -> np.ndarray:
  """Per-layer KL shares (percent of the example's total KL), top layer first.

  Args:
    num_layers: L, the number of stochastic layers (latent groups).
    scale: ratio of the last layer's exponential term to the first's.
    shift: constant added to every exponential term (flattens the schedule).
    total_percent: what the shares sum to (66.7 in the paper's code).

  Returns:
    float32 ``[L]`` of ``total_percent * r_l / sum(r)`` with
    ``r_l = exp(linspace(0, log(scale), L))_l + shift``.
  """
  if num_layers < 1:
    raise ValueError(f"num_layers={num_layers} must be >= 1")
  if scale <= 0:
    raise ValueError(f"scale={scale} must be > 0")
  rates = np.exp(np.linspace(0.0, np.log(scale), num_layers)) + shift
  return (rates / rates.sum() * total_percent).astype(np.float32)


def kl_weight(kl: Array, lower: Array, upper: Array) -> Array:
  """Piecewise-linear weight of a KL against its allotment [lower, upper).

  ``kl / lower`` below ``lower``, 1 on ``[lower, upper)``, then linear from 1 to 2 on
  ``[upper, lower + upper)``, 2 above; clipped below at 0.1 (authors'
  ``calc_weight_for_kl``). Not differentiated through (the caller stops gradients).
  """
  top = lower + upper
  ramp = (kl - upper) / (top - upper) + 1.0
  w = jnp.where(kl < lower, kl / lower,
                jnp.where(kl < upper, 1.0, jnp.where(kl < top, ramp, 2.0)))
  return jnp.maximum(w, MIN_WEIGHT)


def scheduled_kl_weights(kl: Array, shares: Array) -> Array:
  """Per-example, per-layer weights of the KL schedule (gradient stopped).

  Args:
    kl: per-layer KLs ``[B, L]`` (nats), top layer first.
    shares: ``[L]`` percent shares from :func:`shifted_exp_rates`.

  Returns:
    ``[B, L]`` weights; ``sum(weights * kl, -1)`` is the scheduled KL term.
  """
  total = jnp.sum(kl, axis=-1, keepdims=True)
  lower = shares * total * 0.01
  return jax.lax.stop_gradient(kl_weight(kl, lower, 2.0 * lower))
