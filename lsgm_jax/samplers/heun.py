"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithms 1 and 2).

The probability flow is integrated in EDM's coordinates (``scaled_view``): x_hat = x / s(t)
and sigma = sigma(t) = std / alpha, where it reads d x_hat / d sigma = (x_hat - D) / sigma
with D(x_hat; sigma) = x_hat + sigma^2 s(t) score(s(t) x_hat, t) (EDM eq. (3) with s = 1;
s(t) score(s x_hat, t) is the score of p(x_hat; sigma)). This is the "preconditioning
view" of EDM, Sec. 3: the same ODE for VP, sub-VP and VE, only the map t <-> sigma
differs, and the score is always evaluated at t(sigma) on the SDE's own state s(t) x_hat.

Noise levels (EDM eq. (5), rho = 7): sigma_i = (sigma_max^(1/rho) + i / (N - 1)
(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i < N and sigma_N = 0, with
sigma_max = sigma(T), sigma_min = sigma(eps). Each step (Algorithm 2):
  churn:  gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0,
          sigma_hat = sigma_i (1 + gamma_i), x_hat += sqrt(sigma_hat^2 - sigma_i^2) S_noise z;
  Euler:  d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat, x' = x_hat + (sigma_{i+1} - sigma_hat) d;
  Heun:   if sigma_{i+1} > 0, x' = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2.
The last step (to sigma = 0) is Euler only, so N steps cost 2N - 1 score evaluations.
The first N - 1 steps are one ``lax.scan``; times t(sigma) come from bisection
(``scaled_view.invert_increasing``) and sigma is recomputed from t so that the grid is
self-consistent.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lsgm_jax.samplers import scaled_view as sv
from lsgm_jax.samplers.euler_maruyama import Info, batch_time, prior_state, split_state, step_keys
from lsgm_jax.sde.base import SDE, Array, ScoreFn


def karras_sigmas(num_steps: int, sigma_min: float | Array, sigma_max: float | Array,
                  rho: float = 7.0) -> Array:
  """EDM eq. (5): ``num_steps`` decreasing noise levels sigma_max ... sigma_min, then 0.

  Args:
    num_steps: N >= 1 (N = 1 gives [sigma_max, 0]).
    sigma_min, sigma_max: the end levels.
    rho: schedule exponent (7 in EDM).

  Returns:
    ``[N + 1]`` array, last entry 0.
  """
  frac = jnp.asarray(np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1),
                     jnp.asarray(sigma_max).dtype)
  inv_rho = 1.0 / rho
  sig = (sigma_max**inv_rho + frac * (sigma_min**inv_rho - sigma_max**inv_rho))**rho
  return jnp.concatenate([sig, jnp.zeros((1,), sig.dtype)])


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "rho", "eps", "s_churn",
                     "s_tmin", "s_tmax", "s_noise"))
def heun(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
         num_steps: int = 18, rho: float = 7.0, eps: float = 1e-3, s_churn: float = 0.0,
         s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0
         ) -> tuple[Array, Info]:
  """Samples with EDM's Heun sampler (Algorithm 2; Algorithm 1 when s_churn = 0).

  Args:
    rng: PRNG key (prior draw, and churn noise when s_churn > 0).
    sde: a scalar process (VP, sub-VP, VE), hashable.
    score_fn: ``score_fn(x, t) -> score``, hashable (static).
    shape: sample shape ``[B, ...]``.
    num_steps: N noise levels (steps); NFE = 2N - 1.
    rho: Karras schedule exponent (EDM: 7).
    eps: time of the smallest nonzero level, sigma_min = sigma(eps). The chain ends at
      sigma = 0 (EDM's last Euler step is Tweedie's denoiser), so there is no ``denoise``.
    s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity (Algorithm 2; 0 = deterministic).

  Returns:
    (samples, info) with ``info["nfe"]`` = 2 num_steps - 1.

  Raises:
    ValueError: for CLD or num_steps < 1.
  """
  sv.check_scalar(sde, "heun")
  if num_steps < 1:
    raise ValueError(f"heun needs num_steps >= 1, got {num_steps}")
  rng_prior, rng_steps = jax.random.split(rng)
  x_state = prior_state(sde, rng_prior, shape)
  dtype = sv.grid_dtype()
  sigma_of_t = lambda t: sv.edm_sigma(sde, t)
  ends = sigma_of_t(jnp.asarray([eps, sde.T], dtype))
  sig = karras_sigmas(num_steps, ends[0], ends[1], rho)[:-1]
  t = sv.invert_increasing(sigma_of_t, sig, sde.T)
  t = t.at[0].set(sde.T).at[-1].set(eps)
  sig = sigma_of_t(t)
  # Churn (EDM Algorithm 2, lines 4-6): gamma_i depends on sigma_i only, so sigma_hat and
  # its time are tabulated too.
  gamma = jnp.where((sig >= s_tmin) & (sig <= s_tmax),
                    min(s_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
  sig_hat = sig * (1.0 + gamma)
  t_hat = t if s_churn == 0.0 else sv.invert_increasing(sigma_of_t, sig_hat, sde.T)
  sig_hat = sigma_of_t(t_hat)
  churn_std = s_noise * jnp.sqrt(jnp.maximum(sig_hat**2 - sig**2, 0.0))
  sig_next = jnp.concatenate([sig[1:], jnp.zeros((1,), dtype)])
  t_next = jnp.concatenate([t[1:], jnp.zeros((1,), dtype)])
  s_hat, _ = sv.alpha_std(sde, t_hat)
  s_next, _ = sv.alpha_std(sde, t_next)

  def slope(x_hat, t_i, s_i, sigma_i):
    """(x_hat - D) / sigma = -sigma s(t) score(s(t) x_hat, t)."""
    s_i, sigma_i = s_i.astype(x_hat.dtype), sigma_i.astype(x_hat.dtype)
    return -sigma_i * s_i * score_fn(s_i * x_hat, batch_time(t_i, x_hat))

  def euler(x_hat, key, i):
    if s_churn > 0.0:  # static
      x_hat = x_hat + churn_std[i] * jax.random.normal(key, x_hat.shape, x_hat.dtype)
    d = slope(x_hat, t_hat[i], s_hat[i], sig_hat[i])
    return x_hat, d, x_hat + (sig_next[i] - sig_hat[i]).astype(x_hat.dtype) * d

  def step(x_hat, inputs):
    key, i = inputs
    x_start, d, x_next = euler(x_hat, key, i)
    d_next = slope(x_next, t_next[i], s_next[i], sig_next[i])
    h = (sig_next[i] - sig_hat[i]).astype(x_hat.dtype)
    return x_start + 0.5 * h * (d + d_next), None

  keys = step_keys(rng_steps, num_steps)
  s_first, _ = sv.alpha_std(sde, t[:1])
  x_hat = x_state / s_first[0].astype(x_state.dtype)
  x_hat, _ = jax.lax.scan(step, x_hat, (keys[:-1], jnp.arange(num_steps - 1)))
  _, _, x_hat = euler(x_hat, keys[-1], num_steps - 1)
  # sigma = 0 is t = 0 for VP / sub-VP (s = 1) and below sigma_min for VE (s = 1 too).
  x, info = split_state(sde, x_hat)
  info["nfe"] = jnp.asarray(2 * num_steps - 1, jnp.int32)
  return x, info
