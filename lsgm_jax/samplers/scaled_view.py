"""The (alpha(t), std(t)) view of a scalar linear SDE that DDIM, EDM and DPM-Solver share.

Every scalar process of ``lsgm_jax.sde`` (VP, sub-VP, VE) has a Gaussian kernel
p_t(x | x0) = N(alpha(t) x0, std(t)^2 I) (``SDE.marginal``). Three equivalent coordinates:

* EDM (Karras et al. 2022, Sec. 2 and Table 1): s(t) = alpha(t), sigma(t) = std / alpha;
  x_hat = x / s(t) has p(x_hat; sigma) = p_data * N(0, sigma^2 I), and its probability
  flow is d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma (EDM eq. 3 with s = 1)
  with the denoiser D(x_hat; sigma) = x_hat + sigma^2 grad log p(x_hat; sigma).
* DPM-Solver (Lu et al. 2022, Sec. 3.1): the half log-SNR lambda(t) = log(alpha / std),
  strictly decreasing in t.
* data prediction x0(x, t) = (x + std^2 score(x, t)) / alpha (Tweedie's formula), the
  quantity DDIM and DPM-Solver++ extrapolate.

The samplers only ask for alpha(t) and std(t): for a linear SDE dx = f(t) x dt + g(t) dw
with that kernel, f = alpha'/alpha and (from d std^2/dt = 2 f std^2 + g^2)
1/2 g^2 = s^2 sigma sigma', so the probability flow dx = [f x - 1/2 g^2 score] dt is EDM's
eq. (4) in (sigma(t), s(t)) for VP, sub-VP and VE alike. Times are found from sigma or
lambda by bisection on [0, T] inside the program, so no SDE needs a closed-form inverse.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lsgm_jax.samplers.euler_maruyama import batch_time, is_augmented
from lsgm_jax.sde.base import SDE, Array, ScoreFn, batch_broadcast

BISECTION_STEPS = 64  # halves [0, T] to below float64 resolution


def check_scalar(sde: SDE, name: str) -> None:
  """Raises ValueError for an augmented (CLD) process: these samplers need a full score."""
  if is_augmented(sde):
    raise ValueError(f"{name} needs a scalar SDE (VP, sub-VP, VE) and a full score; "
                     "for CLD use sscs (order=2 for the second-order variant)")


def alpha_std(sde: SDE, t: Array) -> tuple[Array, Array]:
  """Mean coefficient alpha(t) and std(t) of the kernel, each the shape of ``t`` ``[N]``."""
  mean, std = sde.marginal(jnp.ones(t.shape + (1,), t.dtype), t)
  return mean[:, 0], jnp.broadcast_to(std, t.shape + (1,))[:, 0]


def edm_sigma(sde: SDE, t: Array) -> Array:
  """EDM's sigma(t) = std(t) / s(t), s(t) = alpha(t) (EDM, Sec. 2 / Table 1)."""
  alpha, std = alpha_std(sde, t)
  return std / alpha


def log_snr(sde: SDE, t: Array) -> Array:
  """DPM-Solver's lambda(t) = log(alpha(t) / std(t)) (Lu et al. 2022, Sec. 3.1)."""
  alpha, std = alpha_std(sde, t)
  return jnp.log(alpha) - jnp.log(std)


def invert_increasing(fn: Callable[[Array], Array], target: Array, t_max: float) -> Array:
  """t in [0, t_max] with fn(t) = target for an increasing ``fn``, by vectorised bisection.

  Targets outside [fn(0), fn(t_max)] give the nearer end of the interval.
  """
  lo = jnp.zeros_like(target)
  hi = jnp.full_like(target, t_max)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    below = fn(mid) < target
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, body, (lo, hi))
  return 0.5 * (lo + hi)


def data_prediction(sde: SDE, score_fn: ScoreFn, x: Array, t: Array | float
                    ) -> Array:
  """x0(x, t) = (x + std^2 score(x, t)) / alpha (Tweedie; DPM-Solver++ eq. (8) form)."""
  tb = batch_time(t, x)
  alpha, std = alpha_std(sde, tb)
  alpha, std = batch_broadcast(alpha, x), batch_broadcast(std, x)
  return (x + std**2 * score_fn(x, tb)) / alpha


def grid_dtype() -> jnp.dtype:
  """float64 when x64 is enabled (convergence tests), else float32."""
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
