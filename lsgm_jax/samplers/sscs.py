"""Symmetric splitting CLD sampler (SSCS; CLD paper, Sec. 3.3 "Symmetric Splitting CLD
Sampler" and its appendix algorithm).

The reverse-time CLD SDE (reverse time s = T - t) splits into
  (A) dx = -M^{-1} beta v ds,  dv = (beta x - Gamma M^{-1} beta v) ds + sqrt(2 Gamma beta) dw
      -- the Ornstein-Uhlenbeck plus Hamiltonian part, linear, solved exactly;
  (S) dv = 2 Gamma beta (score_v(u, t) + M^{-1} v) ds
      -- the part carrying the learned score, integrated by one Euler step.
A step of size dt is the symmetric (Strang) composition A(dt/2) S(dt) A(dt/2), with one
score evaluation per step. ``order=2`` is the second-order variant tried for issue 13:
the same Strang composition with (S) integrated by Heun's method at the midpoint time
t - dt/2 (two score evaluations per step); see ``sscs``'s docstring for what it measures.
The exact A-flow is ``CLD.ou_step_mean_cov`` (the same law as
``CLD.sample_ou_step``), tabulated once per time grid; the chain is one ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lsgm_jax.samplers.euler_maruyama import (Info, batch_time, finish, prior_state,
                                              step_keys)
from lsgm_jax.samplers.time_grid import step_table
from lsgm_jax.sde.base import SDE, Array, ScoreFn
from lsgm_jax.sde.cld import CLD, cholesky_2x2

SCORE_TIMES = ("start", "midpoint")


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "eps", "striding", "denoise",
                     "score_time", "num_stab", "order"))
def sscs(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
         num_steps: int = 1000, eps: float = 1e-3, striding: str = "linear",
         denoise: bool = False, score_time: str = "start",
         num_stab: float = 0.0, order: int = 1) -> tuple[Array, Info]:
  """Samples CLD with SSCS: exact OU/Hamiltonian half-steps around an Euler score step.

  Args:
    rng: PRNG key.
    sde: a ``CLD`` process.
    score_fn: velocity score ``score_fn(u, t) -> [shape of v]``, hashable (static).
    shape: data shape ``[B, ..., C]`` (the x part); u has last axis 2C.
    num_steps: number of SSCS steps (one score evaluation each).
    eps: final time (default 1e-3).
    striding: ``"linear"`` or ``"quadratic"`` (the CLD paper uses quadratic for few steps).
    denoise: one extra noise-free Euler-Maruyama step of the reverse SDE from eps to 0, as
      the CLD-SGM denoising step.
    score_time: where the score step is evaluated: ``"start"`` (time t of the step, as in
      the CLD paper's algorithm) or ``"midpoint"`` (t - dt/2, where the first half-step
      ends).
    num_stab: added to the analytic step's covariance diagonal (CLD-SGM ``sscs_num_stab``;
      0 is fine here since ``CLD`` forms the covariance without cancellation).
    order: 1 is the CLD paper's SSCS; 2 integrates (S) by Heun at t - dt/2 (Strang
      splitting with exact A half-steps and a second-order S step; ``score_time`` is then
      ignored). Measured weak orders on exact-score Gaussian data are in BENCHMARKS.md.

  Returns:
    (x samples ``shape``, info) with ``info["nfe"]`` = num_steps (2 num_steps with
    order=2), +1 with denoise, and ``info["v"]`` the final velocity.

  Raises:
    ValueError: if ``sde`` is not a ``CLD`` or ``score_time`` / ``order`` is unknown.
  """
  if not isinstance(sde, CLD):
    raise ValueError(f"sscs needs a CLD process, got {type(sde).__name__}")
  if order not in (1, 2):
    raise ValueError(f"sscs order must be 1 or 2, got {order}")
  if score_time not in SCORE_TIMES:
    raise ValueError(f"unknown score_time {score_time!r}; valid: {', '.join(SCORE_TIMES)}")
  rng_prior, rng_steps = jax.random.split(rng)
  u = prior_state(sde, rng_prior, shape)
  t_start, dt = step_table(num_steps, t_max=sde.T, eps=eps, striding=striding)
  t_start, dt = jnp.asarray(t_start), jnp.asarray(dt)
  t_mid = t_start - 0.5 * dt
  # The A-flow does not depend on the state's values: its mean map and noise Cholesky
  # factor per step are computed once for the whole grid, outside the loop.
  first_half = ou_step_coefficients(sde, t_start, 0.5 * dt, num_stab)
  second_half = ou_step_coefficients(sde, t_mid, 0.5 * dt, num_stab)
  t_score = t_start if score_time == "start" and order == 1 else t_mid

  def step(u, inputs):
    key, ts, h, coeffs1, coeffs2 = inputs
    k1, k2 = jax.random.split(key)
    # CLD paper, SSCS: A(dt/2) -- exact OU + Hamiltonian flow from t to t - dt/2.
    u = apply_ou_step(k1, u, coeffs1)
    # S(dt) -- Euler step of v' = 2 Gamma beta (score_v + M^{-1} v) (score at t: paper).
    ts_b = batch_time(ts, u)
    if order == 1:
      u = sde.sscs_score_step(u, ts_b, h, score_fn(u, ts_b))
    else:
      # Heun on v' = F(v) = 2 Gamma beta (score_v + M^{-1} v) at the frozen time t - dt/2.
      score_start = score_fn(u, ts_b)
      u_euler = sde.sscs_score_step(u, ts_b, h, score_start)
      u_half = sde.sscs_score_step(u, ts_b, 0.5 * h, score_start)
      u = u_half + (sde.sscs_score_step(u_euler, ts_b, 0.5 * h, score_fn(u_euler, ts_b))
                    - u_euler)
    # A(dt/2) again, from t - dt/2 to t - dt.
    u = apply_ou_step(k2, u, coeffs2)
    return u, None

  inputs = (step_keys(rng_steps, num_steps), t_score, dt, first_half, second_half)
  u, _ = jax.lax.scan(step, u, inputs)
  return finish(sde, score_fn, u, eps, denoise, order * num_steps)


def ou_step_coefficients(sde: CLD, t: Array, dt: Array, num_stab: float = 0.0
                         ) -> tuple[Array, ...]:
  """Per-step coefficients of SSCS's exact A-flow from t to t - dt, for a grid of steps.

  The flow is u' = Phi u + L z with a 2x2 Phi and lower-triangular L per dimension
  (``CLD.ou_step_mean_cov``); Phi's columns are the means of the basis states (1, 0)
  and (0, 1).

  Args:
    sde: the CLD process.
    t: ``[N]`` start times; dt: ``[N]`` positive step sizes.
    num_stab: added to the covariance diagonal.

  Returns:
    (phi_xx, phi_xv, phi_vx, phi_vv, l11, l21, l22), each ``[N]``.
  """
  ones, zeros = jnp.ones_like(t)[:, None], jnp.zeros_like(t)[:, None]
  mean_ex, cov, det = sde.ou_step_mean_cov(CLD.join(ones, zeros), t, dt, num_stab)
  mean_ev, _, _ = sde.ou_step_mean_cov(CLD.join(zeros, ones), t, dt, num_stab)
  (phi_xx, phi_vx), (phi_xv, phi_vv) = CLD.split(mean_ex), CLD.split(mean_ev)
  chol = cholesky_2x2(cov, det)
  return tuple(a[:, 0] for a in (phi_xx, phi_xv, phi_vx, phi_vv) + tuple(chol))


def apply_ou_step(rng: Array, u: Array, coeffs: tuple[Array, ...]) -> Array:
  """Draws u' = Phi u + L z for one step's scalar coefficients (``ou_step_coefficients``)."""
  phi_xx, phi_xv, phi_vx, phi_vv, l11, l21, l22 = coeffs
  x, v = CLD.split(u)
  z_x, z_v = CLD.split(jax.random.normal(rng, u.shape, u.dtype))
  new_x = phi_xx * x + phi_xv * v + l11 * z_x
  new_v = phi_vx * x + phi_vv * v + l21 * z_x + l22 * z_v
  return CLD.join(new_x, new_v)
