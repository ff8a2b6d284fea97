"""DDIM (Song, Meng & Ermon 2021, eq. (12)) in continuous time, for scalar SDEs.

One step from t to s < t with the data and noise predictions x0 = (x + std_t^2 score) /
alpha_t and eps = (x - alpha_t x0) / std_t:

  x_s = alpha_s x0 + sqrt(std_s^2 - sigma_ts^2) eps + sigma_ts z,
  sigma_ts = eta * (std_s / std_t) * sqrt(std_t^2 - (alpha_t / alpha_s)^2 std_s^2)

(DDIM eq. (16): with std^2 = 1 - alpha^2 this is
eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s), a = alpha^2). eta = 0 is the
deterministic DDIM, the first-order exponential integrator of the probability flow
(DPM-Solver-1, Lu et al. 2022, Sec. 4.1); eta = 1 draws from the forward process's
posterior q(x_s | x_t, x0) (DDPM ancestral sampling). The formula only needs the kernel
(alpha, std), so it serves VP, sub-VP and VE. One score evaluation per step, one
``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lsgm_jax.samplers import scaled_view as sv
from lsgm_jax.samplers.euler_maruyama import Info, finish, prior_state, step_keys
from lsgm_jax.samplers.time_grid import time_grid
from lsgm_jax.sde.base import SDE, Array, ScoreFn


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "eta", "eps", "striding",
                     "denoise"))
def ddim(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
         num_steps: int = 50, eta: float = 0.0, eps: float = 1e-3,
         striding: str = "linear", denoise: bool = False) -> tuple[Array, Info]:
  """Samples with DDIM from t = T down to eps.

  Args:
    rng: PRNG key.
    sde: a scalar process (VP, sub-VP, VE), hashable.
    score_fn: ``score_fn(x, t) -> score``, hashable (static).
    shape: sample shape ``[B, ...]``.
    num_steps: number of steps (= NFE without denoise).
    eta: 0 deterministic DDIM; 1 the DDPM posterior; in between DDIM's family.
    eps: final time.
    striding: ``"linear"`` or ``"quadratic"`` time grid (``time_grid``).
    denoise: one extra noise-free reverse step from eps to 0.

  Returns:
    (samples, info) with ``info["nfe"]`` = num_steps (+1 with denoise).

  Raises:
    ValueError: for CLD or eta outside [0, 1].
  """
  sv.check_scalar(sde, "ddim")
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"ddim needs 0 <= eta <= 1, got {eta}")
  rng_prior, rng_steps = jax.random.split(rng)
  x = prior_state(sde, rng_prior, shape)
  dtype = sv.grid_dtype()
  t = jnp.asarray(time_grid(num_steps, t_max=sde.T, eps=eps, striding=striding), dtype)
  alpha, std = sv.alpha_std(sde, t)
  a_t, s_t, a_s, s_s = alpha[:-1], std[:-1], alpha[1:], std[1:]
  # Forward transition variance from s to t: std_t^2 - (alpha_t/alpha_s)^2 std_s^2 >= 0.
  trans_var = jnp.maximum(s_t**2 - (a_t / a_s)**2 * s_s**2, 0.0)
  noise_std = eta * (s_s / s_t) * jnp.sqrt(trans_var)
  eps_coef = jnp.sqrt(jnp.maximum(s_s**2 - noise_std**2, 0.0))

  def step(x, inputs):
    key, t_i, a_i, s_i, a_next, c_eps, c_noise = inputs
    x0 = sv.data_prediction(sde, score_fn, x, t_i)
    eps_hat = (x - a_i.astype(x.dtype) * x0) / s_i.astype(x.dtype)
    x_next = a_next * x0 + c_eps * eps_hat
    if eta > 0.0:  # static: the deterministic sampler draws no noise
      x_next = x_next + c_noise * jax.random.normal(key, x.shape, x.dtype)
    x = x_next.astype(x.dtype)
    return x, None

  inputs = (step_keys(rng_steps, num_steps), t[:-1], a_t, s_t, a_s, eps_coef, noise_std)
  x, _ = jax.lax.scan(step, x, inputs)
  return finish(sde, score_fn, x, eps, denoise, num_steps)
