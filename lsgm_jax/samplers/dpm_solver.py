"""DPM-Solver++(2M): second-order multistep exponential integrator with data prediction
(Lu et al. 2022b, "DPM-Solver++", Algorithm 2), for scalar SDEs.

In the half log-SNR lambda = log(alpha / std) the probability flow has the exact solution
x_t = (std_t / std_s) x_s + std_t int_{lambda_s}^{lambda_t} e^{lambda} x0(x_lambda) d lambda
(DPM-Solver++ eq. (9)); the integral is approximated by extrapolating the data prediction
x0 = (x + std^2 score) / alpha linearly from the two previous steps. With
h_i = lambda_i - lambda_{i-1} and r_i = h_{i-1} / h_i:

  D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}    (first step: D_1 = x0_0)
  x_i = (std_i / std_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i.

The first step is DDIM (first order); with ``lower_order_final`` and fewer than 10 steps
the last step is too (the reference implementation's rule for few-step stability). One
score evaluation per step, one ``lax.scan``.

Time grids (DPM-Solver, Sec. 3.3 / App. on step sizes): ``"time_uniform"`` (t linear from
T to eps, recommended for high-resolution images) and ``"logSNR"`` (lambda uniform,
recommended for low resolution); times of the logSNR grid come from bisection.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lsgm_jax.samplers import scaled_view as sv
from lsgm_jax.samplers.euler_maruyama import Info, finish, prior_state
from lsgm_jax.samplers.heun import karras_sigmas
from lsgm_jax.samplers.time_grid import time_grid
from lsgm_jax.sde.base import SDE, Array, ScoreFn

SCHEDULES = ("time_uniform", "logSNR", "time_quadratic", "karras")


def dpm_time_grid(sde: SDE, num_steps: int, eps: float, schedule: str) -> Array:
  """The ``num_steps + 1`` decreasing times T ... eps of a DPM-Solver schedule."""
  dtype = sv.grid_dtype()
  if schedule == "time_uniform":
    return jnp.asarray(time_grid(num_steps, t_max=sde.T, eps=eps), dtype)
  if schedule == "logSNR":
    ends = sv.log_snr(sde, jnp.asarray([sde.T, eps], dtype))
    lam = jnp.linspace(ends[0], ends[1], num_steps + 1, dtype=dtype)
    # -lambda is increasing in t.
    t = sv.invert_increasing(lambda t: -sv.log_snr(sde, t), -lam, sde.T)
    return t.at[0].set(sde.T).at[-1].set(eps)
  if schedule == "time_quadratic":
    return jnp.asarray(time_grid(num_steps, t_max=sde.T, eps=eps, striding="quadratic"), dtype)
  if schedule == "karras":
    ends = sv.edm_sigma(sde, jnp.asarray([eps, sde.T], dtype))
    sig = karras_sigmas(num_steps + 1, ends[0], ends[1], 7.0)[:-1]
    t = sv.invert_increasing(lambda t: sv.edm_sigma(sde, t), sig, sde.T)
    return t.at[0].set(sde.T).at[-1].set(eps)
  raise ValueError(f"unknown DPM-Solver schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "schedule", "eps",
                     "lower_order_final", "denoise"))
def dpm_solver_pp(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                  num_steps: int = 20, schedule: str = "logSNR", eps: float = 1e-3,
                  lower_order_final: bool = True, denoise: bool = False
                  ) -> tuple[Array, Info]:
  """Samples with DPM-Solver++(2M) from t = T down to eps.

  Args:
    rng: PRNG key (only the prior draw is random).
    sde: a scalar process (VP, sub-VP, VE), hashable.
    score_fn: ``score_fn(x, t) -> score``, hashable (static).
    shape: sample shape ``[B, ...]``.
    num_steps: M steps = M score evaluations.
    schedule: ``"logSNR"`` or ``"time_uniform"``.
    eps: final time (DPM-Solver: 1e-3 for VP at few steps, 1e-4 at many).
    lower_order_final: first-order last step when num_steps < 10.
    denoise: one extra noise-free reverse step from eps to 0.

  Returns:
    (samples, info) with ``info["nfe"]`` = num_steps (+1 with denoise).

  Raises:
    ValueError: for CLD or an unknown schedule.
  """
  sv.check_scalar(sde, "dpm_solver_pp")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown DPM-Solver schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
  x = prior_state(sde, rng, shape)
  t = dpm_time_grid(sde, num_steps, eps, schedule)
  alpha, std = sv.alpha_std(sde, t)
  lam = jnp.log(alpha) - jnp.log(std)
  h = lam[1:] - lam[:-1]
  r = jnp.concatenate([jnp.ones((1,), h.dtype), h[:-1] / h[1:]])
  order = jnp.full((num_steps,), 2).at[0].set(1)
  if lower_order_final and num_steps < 10:
    order = order.at[-1].set(1)
  # Per-step coefficients of x_i = c_x x_{i-1} + c_d D_i.
  c_x = std[1:] / std[:-1]
  c_d = -alpha[1:] * jnp.expm1(-h)

  def step(carry, inputs):
    x, x0_prev = carry
    t_i, r_i, order_i, cx_i, cd_i = inputs
    x0 = sv.data_prediction(sde, score_fn, x, t_i)
    w = (0.5 / r_i).astype(x.dtype)
    d = jnp.where(order_i == 2, (1.0 + w) * x0 - w * x0_prev, x0)
    x = (cx_i * x + cd_i * d).astype(x.dtype)
    return (x, x0), None

  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), (t[:-1], r, order, c_x, c_d))
  return finish(sde, score_fn, x, eps, denoise, num_steps)
