"""Symmetric splitting CLD sampler (SSCS; CLD paper, Sec. 3.3 "Symmetric Splitting CLD
Sampler" and its appendix algorithm).

The reverse-time CLD SDE (reverse time s = T - t) splits into
  (A) dx = -M^{-1} beta v ds,  dv = (beta x - Gamma M^{-1} beta v) ds + sqrt(2 Gamma beta) dw
      -- the Ornstein-Uhlenbeck plus Hamiltonian part, linear, solved exactly;
  (S) dv = 2 Gamma beta (score_v(u, t) + M^{-1} v) ds
      -- the part carrying the learned score, integrated by one Euler step.
A step of size dt is the symmetric (Strang) composition A(dt/2) S(dt) A(dt/2), with one
score evaluation per step. The exact A-flow comes from ``CLD.sample_ou_step``; the whole
chain is one ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax

from lsgm_jax.samplers.euler_maruyama import (Info, batch_time, finish, prior_state,
                                              step_keys)
from lsgm_jax.samplers.time_grid import step_table
from lsgm_jax.sde.base import SDE, Array, ScoreFn
from lsgm_jax.sde.cld import CLD

SCORE_TIMES = ("start", "midpoint")


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "eps", "striding", "denoise",
                     "score_time", "num_stab"))
def sscs(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
         num_steps: int = 1000, eps: float = 1e-3, striding: str = "linear",
         denoise: bool = False, score_time: str = "start",
         num_stab: float = 0.0) -> tuple[Array, Info]:
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

  Returns:
    (x samples ``shape``, info) with ``info["nfe"]`` = num_steps (+1 with denoise) and
    ``info["v"]`` the final velocity.

  Raises:
    ValueError: if ``sde`` is not a ``CLD`` or ``score_time`` is unknown.
  """
  if not isinstance(sde, CLD):
    raise ValueError(f"sscs needs a CLD process, got {type(sde).__name__}")
  if score_time not in SCORE_TIMES:
    raise ValueError(f"unknown score_time {score_time!r}; valid: {', '.join(SCORE_TIMES)}")
  rng_prior, rng_steps = jax.random.split(rng)
  u = prior_state(sde, rng_prior, shape)
  t_start, dt = step_table(num_steps, t_max=sde.T, eps=eps, striding=striding)

  def step(u, inputs):
    key, t, h = inputs
    k1, k2 = jax.random.split(key)
    t_b = batch_time(t, u)
    t_mid = batch_time(t - 0.5 * h, u)
    # CLD paper, SSCS: A(dt/2) -- exact OU + Hamiltonian flow.
    u = sde.sample_ou_step(k1, u, t_b, 0.5 * h, num_stab)
    # S(dt) -- Euler step of v' = 2 Gamma beta (score_v + M^{-1} v).
    t_score = t_b if score_time == "start" else t_mid
    u = sde.sscs_score_step(u, t_score, h, score_fn(u, t_score))
    # A(dt/2) again, from t - dt/2 to t - dt.
    u = sde.sample_ou_step(k2, u, t_mid, 0.5 * h, num_stab)
    return u, None

  u, _ = jax.lax.scan(step, u, (step_keys(rng_steps, num_steps), t_start, dt))
  return finish(sde, score_fn, u, eps, denoise, num_steps)
