"""DPM-Solver++(2M) and (3M): multistep exponential integrators with data prediction
(Lu et al. 2022b, "DPM-Solver++", Algorithm 2 and its third-order multistep variant), for
scalar SDEs.

In the half log-SNR lambda = log(alpha / std) the probability flow has the exact solution
x_t = (std_t / std_s) x_s + std_t int_{lambda_s}^{lambda_t} e^{lambda} x0(x_lambda) d lambda
(DPM-Solver++ eq. (9)); the integral is approximated by extrapolating the data prediction
x0 = (x + std^2 score) / alpha linearly from the two previous steps. With
h_i = lambda_i - lambda_{i-1} and r_i = h_{i-1} / h_i:

  D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}    (first step: D_1 = x0_0)
  x_i = (std_i / std_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i.

3M (``order=3``) extrapolates x0 quadratically from three steps (the reference
implementation's ``multistep_dpm_solver_third_update``): with h_0 = lambda_{i-1} -
lambda_{i-2}, h_1 = lambda_{i-2} - lambda_{i-3}, r0 = h_0 / h_i, r1 = h_1 / h_i,

  D1_0 = (x0_{i-1} - x0_{i-2}) / r0,  D1_1 = (x0_{i-2} - x0_{i-3}) / r1,
  D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1),
  phi_1 = e^{-h} - 1,  phi_2 = phi_1 / h + 1,  phi_3 = phi_2 / h - 1/2,
  x_i = (std_i / std_{i-1}) x_{i-1} - alpha_i (phi_1 x0_{i-1} - phi_2 D1 + phi_3 D2).

The first step is DDIM (first order), the second (for 3M) second order; with
``lower_order_final`` and fewer than 10 steps the last steps drop order the same way (the
reference implementation's rule for few-step stability). One score evaluation per step,
one ``lax.scan``.

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
                     "lower_order_final", "denoise", "order"))
def dpm_solver_pp(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                  num_steps: int = 20, schedule: str = "logSNR", eps: float = 1e-3,
                  lower_order_final: bool = True, denoise: bool = False, order: int = 2
                  ) -> tuple[Array, Info]:
  """Samples with DPM-Solver++(2M), or (3M) with ``order=3``, from t = T down to eps.

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
    order: 2 (2M, the default) or 3 (3M).

  Returns:
    (samples, info) with ``info["nfe"]`` = num_steps (+1 with denoise).

  Raises:
    ValueError: for CLD or an unknown schedule.
  """
  sv.check_scalar(sde, "dpm_solver_pp")
  if order not in (2, 3):
    raise ValueError(f"DPM-Solver++ order must be 2 or 3, got {order}")
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown DPM-Solver schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
  x = prior_state(sde, rng, shape)
  t = dpm_time_grid(sde, num_steps, eps, schedule)
  alpha, std = sv.alpha_std(sde, t)
  lam = jnp.log(alpha) - jnp.log(std)
  h = lam[1:] - lam[:-1]
  # h_0 / h_1: the previous two step sizes (1 where there is none; those steps are lower
  # order and never use them).
  h0 = jnp.concatenate([jnp.ones((1,), h.dtype), h[:-1]])
  h1 = jnp.concatenate([jnp.ones((2,), h.dtype), h[:-2]])[:num_steps]
  # Step i's order: min(order, i + 1), and with lower_order_final, min(., num_steps - i).
  step_order = jnp.minimum(order, jnp.arange(num_steps) + 1)
  if lower_order_final and num_steps < 10:
    step_order = jnp.minimum(step_order, num_steps - jnp.arange(num_steps))
  # Per-step coefficients: x_i = c_x x_{i-1} - alpha_i (phi_1 x0 - phi_2 D1 + phi_3 D2).
  c_x = std[1:] / std[:-1]
  phi_1 = jnp.expm1(-h)
  phi_2 = phi_1 / h + 1.0
  phi_3 = phi_2 / h - 0.5
  a = alpha[1:]

  def step(carry, inputs):
    x, x0_1, x0_2 = carry  # data predictions of the previous two steps
    t_i, h_i, h0_i, h1_i, order_i, cx_i, a_i, p1, p2, p3 = inputs
    x0 = sv.data_prediction(sde, score_fn, x, t_i)
    r0, r1 = h0_i / h_i, h1_i / h_i
    d1_0 = (x0 - x0_1) / r0.astype(x.dtype)
    d1_1 = (x0_1 - x0_2) / r1.astype(x.dtype)
    second = -a_i * p1 * (x0 + 0.5 * d1_0)  # 2M: D = x0 + (x0 - x0_1) / (2 r0)
    d1 = d1_0 + (r0 / (r0 + r1)).astype(x.dtype) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1).astype(x.dtype)
    third = -a_i * (p1 * x0 - p2 * d1 + p3 * d2)
    first = -a_i * p1 * x0
    update = jnp.where(order_i == 1, first, jnp.where(order_i == 2, second, third))
    x = (cx_i * x + update).astype(x.dtype)
    return (x, x0, x0_1), None

  zeros = jnp.zeros_like(x)
  (x, _, _), _ = jax.lax.scan(
      step, (x, zeros, zeros),
      (t[:-1], h, h0, h1, step_order, c_x, a, phi_1, phi_2, phi_3))
  return finish(sde, score_fn, x, eps, denoise, num_steps)
