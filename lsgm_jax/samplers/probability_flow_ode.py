"""Sampling with the probability-flow ODE (tutorial, "Converting SDE into ODE"; Song et al.
2021, Sec. 4.3): dx/dt = f(x, t) - 1/2 G G^T score(x, t), integrated from T to eps with
a diffrax solver, adaptive (PID controller on rtol / atol) or fixed-step. The whole solve
is one compiled program (diffrax's bounded while loop), with no host round trips.

NFE accounting. A diffrax explicit Runge-Kutta step costs ``stages`` vector-field calls,
or ``stages - 1`` for first-same-as-last (FSAL) tableaus, which pay one extra call for the
first step; choosing the initial step (``dt0=None``) costs 2 more. Rejected steps cost
the same as accepted ones. The count below is exact except that a rejected *very first*
step of an FSAL solver re-evaluates f(t0) once more, which the small default ``dt0``
avoids in practice.
"""

from __future__ import annotations

import functools
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

from lsgm_jax.samplers.euler_maruyama import Info, batch_time, finish, prior_state
from lsgm_jax.sde.base import SDE, Array, ScoreFn

SOLVERS: dict[str, type[diffrax.AbstractSolver]] = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "euler": diffrax.Euler,
}


def get_solver(solver: str | diffrax.AbstractSolver) -> diffrax.AbstractSolver:
  """A diffrax solver from its name in ``SOLVERS`` (or an instance, returned as is)."""
  if isinstance(solver, diffrax.AbstractSolver):
    return solver
  if solver not in SOLVERS:
    raise ValueError(f"unknown ODE solver {solver!r}; valid: {', '.join(SOLVERS)}")
  return SOLVERS[solver]()


def _evals_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
  """(vector-field calls per step, one-off calls) of an explicit RK / Euler solver."""
  tableau = getattr(solver, "tableau", None)
  if tableau is None:  # Euler and other one-stage solvers.
    return 1, 0
  stages = len(tableau.c) + 1
  return (stages - 1, 1) if tableau.fsal else (stages, 0)


def solve_ode(vector_field: Callable[[Array, object], object], y0: object, t0: float,
              t1: float, *, solver: str | diffrax.AbstractSolver = "tsit5",
              rtol: float = 1e-5, atol: float = 1e-5, num_steps: int | None = None,
              dt0: float | None = None, max_steps: int = 4096) -> tuple[object, Array]:
  """Solves dy/dt = vector_field(t, y) from t0 to t1 with diffrax; returns (y(t1), NFE).

  Args:
    vector_field: ``vector_field(t, y) -> dy/dt`` with scalar ``t`` and pytree ``y``.
    y0: initial pytree.
    t0, t1: start and end times (t1 < t0 integrates backwards).
    solver: name in ``SOLVERS`` or a diffrax solver instance.
    rtol, atol: PID-controller tolerances (adaptive mode).
    num_steps: if set, fixed step size (t1 - t0) / num_steps instead of adaptive.
    dt0: adaptive mode's first step magnitude; ``None`` lets diffrax choose (2 NFE).
      Default: None.
    max_steps: step limit of the adaptive solve.

  Returns:
    (y at t1, number of vector-field evaluations as an int32 scalar). y is NaN if the
    solve failed (e.g. ``max_steps`` reached): no host callback raises inside the program.
  """
  solver = get_solver(solver)
  per_step, one_off = _evals_per_step(solver)
  term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
  direction = 1.0 if t1 > t0 else -1.0
  if num_steps is not None:
    controller = diffrax.ConstantStepSize()
    first_dt = (t1 - t0) / num_steps
    max_steps = num_steps
    select_cost = 0
  else:
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    first_dt = None if dt0 is None else direction * abs(dt0)
    select_cost = 2 if dt0 is None else 0
  sol = diffrax.diffeqsolve(term, solver, t0=t0, t1=t1, dt0=first_dt, y0=y0,
                            stepsize_controller=controller, max_steps=max_steps,
                            saveat=diffrax.SaveAt(t1=True), throw=False)
  # throw=False keeps equinox's host-side error callback out of the program; a failed
  # solve (e.g. max_steps reached) returns NaN instead of raising.
  ok = sol.result == diffrax.RESULTS.successful
  y1 = jax.tree_util.tree_map(lambda a: jnp.where(ok, a[-1], jnp.nan), sol.ys)
  nfe = sol.stats["num_steps"] * per_step + one_off + select_cost
  return y1, jnp.asarray(nfe, jnp.int32)


def probability_flow_drift(sde: SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
  """dx/dt = f - 1/2 G G^T score as a function ``(x, t[B]) -> dx/dt`` (forward time)."""
  reverse = sde.reverse(score_fn, probability_flow=True)
  return lambda x, t: reverse.sde(x, t)[0]


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "rtol", "atol", "solver", "num_steps",
                     "dt0", "max_steps", "eps", "denoise"))
def probability_flow_ode(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                         rtol: float = 1e-5, atol: float = 1e-5,
                         solver: str | diffrax.AbstractSolver = "tsit5",
                         num_steps: int | None = None, dt0: float | None = 1e-3,
                         max_steps: int = 4096, eps: float = 1e-3,
                         denoise: bool = False) -> tuple[Array, Info]:
  """Samples by integrating the probability-flow ODE from the prior at T down to eps.

  Args:
    rng: PRNG key (only the prior draw is random).
    sde: forward process (VP, sub-VP, VE, CLD), hashable.
    score_fn: ``score_fn(x, t) -> score`` (CLD: velocity score), hashable (static).
    shape: data shape ``[B, ...]`` (CLD: the x part).
    rtol, atol: adaptive tolerances (score_sde: 1e-5 each).
    solver: name in ``SOLVERS`` or a diffrax solver.
    num_steps: fixed-step mode when set (e.g. with ``solver="euler"`` or ``"heun"``).
    dt0: first adaptive step magnitude (None: diffrax's initial step selection).
    max_steps: step cap of the adaptive solve.
    eps: final time.
    denoise: one extra noise-free reverse-SDE step from eps to 0.

  Returns:
    (samples, info) with ``info["nfe"]`` the solver's vector-field evaluations (+1 with
    denoise); CLD adds ``info["v"]``.
  """
  u0 = prior_state(sde, rng, shape)
  drift = probability_flow_drift(sde, score_fn)
  u, nfe = solve_ode(lambda t, u: drift(u, batch_time(t, u)), u0, sde.T, eps,
                     solver=solver, rtol=rtol, atol=atol, num_steps=num_steps, dt0=dt0,
                     max_steps=max_steps)
  return finish(sde, score_fn, u, eps, denoise, nfe)
