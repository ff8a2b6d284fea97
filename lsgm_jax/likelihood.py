"""Log-likelihoods through the probability-flow ODE, and bits per dimension.

Tutorial, "Converting SDE into ODE" (Song et al. 2021, Sec. 4.3 and App. D.2): along
dx/dt = f~(x, t) = f - 1/2 G G^T score, the instantaneous change of variables gives

  log p_eps(x_eps) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt,

solved forward from the data at t = eps to T with diffrax as ONE compiled adaptive solve
(no host round trips). The divergence is the Hutchinson-Skilling estimate
div f~ ~= z^T (df~/dx) z with one probe z per example drawn once and held fixed along
the whole path (Gaussian or Rademacher, as score_sde), computed with one forward-mode
``jax.jvp`` per evaluation. ``probe="exact"`` forms the full trace with one jvp per
dimension (small data only; used by the tests to isolate the ODE error).

CLD (CLD paper, Sec. 3 / App. on likelihood): the ODE runs on u = (x, v) and gives the
joint log p(x, v0); with v0 ~ p(v0) = N(0, gamma M I) drawn independently of x,

  log p(x) >= E_{v0}[log p(x, v0) - log p(v0)] = E_{v0}[log p(x, v0)] + H[N(0, gamma M I)],

which is :func:`cld_log_likelihood_bound`.
"""

from __future__ import annotations

import functools
import math

import diffrax
import jax
import jax.numpy as jnp

from lsgm_jax.samplers.euler_maruyama import batch_time
from lsgm_jax.samplers.probability_flow_ode import probability_flow_drift, solve_ode
from lsgm_jax.sde.base import SDE, Array, ScoreFn
from lsgm_jax.sde.cld import CLD

PROBES = ("gaussian", "rademacher", "exact")


def _sum_per_example(a: Array) -> Array:
  return jnp.sum(jnp.reshape(a, (a.shape[0], -1)), axis=-1)


def _draw_probe(rng: Array, x: Array, probe: str) -> Array:
  if probe == "gaussian":
    return jax.random.normal(rng, x.shape, x.dtype)
  if probe == "rademacher":
    return jax.random.rademacher(rng, x.shape, x.dtype)
  raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "rtol", "atol", "eps", "probe", "solver", "dt0",
                     "max_steps"))
def log_likelihood(rng: Array, sde: SDE, score_fn: ScoreFn, x: Array, *, rtol: float = 1e-5,
                   atol: float = 1e-5, eps: float = 1e-5, probe: str = "gaussian",
                   solver: str | diffrax.AbstractSolver = "tsit5", dt0: float | None = None,
                   max_steps: int = 4096) -> tuple[Array, Array]:
  """log p_eps(x) per example via the probability-flow ODE (Song et al. 2021, App. D.2).

  Args:
    rng: PRNG key for the Hutchinson probes (unused with ``probe="exact"``).
    sde: forward process (for CLD, ``x`` is the joint state u = (x, v)), hashable.
    score_fn: ``score_fn(x, t) -> score`` (CLD: velocity score), hashable (static).
    x: data ``[B, ...]`` at t = eps (already scaled, e.g. dequantised to [-1, 1]).
    rtol, atol: adaptive tolerances of the ODE solve (score_sde: 1e-5).
    eps: start time of the integration (score_sde: 1e-5).
    probe: ``"gaussian"`` or ``"rademacher"`` Hutchinson probes, one per example held
      fixed along the path; ``"exact"`` for the full Jacobian trace (D jvps per step).
    solver: name in ``samplers.probability_flow_ode.SOLVERS`` or a diffrax solver.
    dt0: first step magnitude (None: diffrax's initial-step selection).
    max_steps: step cap of the adaptive solve.

  Returns:
    (logp ``[B]`` in nats, nfe int32 scalar: drift evaluations, each with one jvp per
    probe).
  """
  if probe not in PROBES:
    raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")
  drift = probability_flow_drift(sde, score_fn)
  if probe == "exact":
    dim = math.prod(x.shape[1:])
    # One-hot probes e_d for every example at once: tr J = sum_d e_d^T J e_d.
    probes = jnp.reshape(jnp.eye(dim, dtype=x.dtype), (dim, 1) + x.shape[1:])
    probes = jnp.broadcast_to(probes, (dim,) + x.shape)
  else:
    probes = _draw_probe(rng, x, probe)[None]

  def vector_field(t, state):
    y, _ = state
    t_b = batch_time(t, y)
    f = lambda y_: drift(y_, t_b)
    dy = f(y)
    # Hutchinson-Skilling: div f ~= z^T (df/dy) z via a forward-mode jvp per probe.
    jz = jax.vmap(lambda z: jax.jvp(f, (y,), (z,))[1])(probes)
    div = jnp.sum(jax.vmap(_sum_per_example)(probes * jz), axis=0)
    return dy, div

  state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
  (x_t, delta), nfe = solve_ode(vector_field, state0, eps, sde.T, solver=solver, rtol=rtol,
                                atol=atol, dt0=dt0, max_steps=max_steps)
  # log p_eps(x_eps) = log p_T(x_T) + int_eps^T div f~ dt.
  return sde.prior_logp(x_t) + delta, nfe


def cld_log_likelihood_bound(rng: Array, sde: CLD, score_fn: ScoreFn, x: Array, *,
                             analytic_entropy: bool = True, **ode_options
                             ) -> tuple[Array, Array]:
  """Lower bound on log p(x) for CLD (CLD paper, likelihood section).

  log p(x) >= E_{v0 ~ N(0, gamma M I)}[log p(x, v0)] + H[N(0, gamma M I)]: one v0 per
  example, the joint log p(x, v0) from :func:`log_likelihood` on u = (x, v0).

  Args:
    rng: PRNG key (v0 draw and Hutchinson probes).
    sde: the ``CLD`` process.
    score_fn: velocity score ``score_fn(u, t)``, hashable.
    x: data ``[B, ..., C]`` (x part only).
    analytic_entropy: add the exact entropy D/2 (1 + log(2 pi gamma M)) (as CLD-SGM), or,
      if False, the single-sample -log N(v0; 0, gamma M I) (same expectation; exact per
      example when p(x, v0) factorises, larger variance otherwise).
    **ode_options: keyword options of :func:`log_likelihood` (rtol, atol, eps, probe,
      solver, dt0, max_steps).

  Returns:
    (bound ``[B]`` in nats, nfe).
  """
  if not isinstance(sde, CLD):
    raise ValueError(f"cld_log_likelihood_bound needs a CLD process, got {type(sde).__name__}")
  rng_v, rng_probe = jax.random.split(rng)
  v0 = sde.init_velocity(rng_v, x)
  logp_joint, nfe = log_likelihood(rng_probe, sde, score_fn, CLD.join(x, v0), **ode_options)
  var_v = sde.hsm_var0v  # gamma M
  dim = math.prod(x.shape[1:])
  if analytic_entropy:
    entropy = 0.5 * dim * (1.0 + math.log(2.0 * math.pi * var_v))
  else:
    entropy = 0.5 * dim * math.log(2.0 * math.pi * var_v) + 0.5 * _sum_per_example(
        jnp.square(v0)) / var_v
  return logp_joint + entropy, nfe


def bits_per_dim(logp: Array, num_dims: int, *, bin_width: float = 2.0 / 256) -> Array:
  """Bits per dimension of discrete data from a continuous log-density of dequantised data.

  Derivation. Let integer data k in {0, ..., 255}^D be mapped to the model's space by
  x = a (k + u) + b with u ~ U[0, 1)^D (uniform dequantisation) and bin width a. The
  probability of k is the mass of its bin, P(k) = int p_X(a (k + u) + b) a^D du, and by
  Jensen log P(k) >= E_u[log p_X(x)] + D log a. Hence, in bits per dimension,

    bpd = -log P(k) / (D log 2) <= -(logp / D + log a) / log 2.

  * Data in [-1, 1] with x = 2 (k + u) / 256 - 1: a = 2/256 and the offset is
    -log2(2/256) = +7 bits (score_sde's ``offset = 7 - inverse_scaler(-1)`` for centred
    data); data in [0, 1] with x = (k + u) / 256: a = 1/256, +8 bits.
  * The convention x = k / 127.5 - 1 dequantised as (k + u) / 127.5 - 1 has a = 1/127.5
    and adds log2(127.5) = 6.994 bits; pass ``bin_width=1/127.5``.

  Args:
    logp: ``[B]`` log-densities of dequantised data (nats), e.g. from
      :func:`log_likelihood` or :func:`cld_log_likelihood_bound`.
    num_dims: D, the number of data dimensions per example (H * W * C).
    bin_width: a, the width of one dequantisation bin in the model's data space.

  Returns:
    ``[B]`` bits per dimension (an upper bound on the discrete model's).
  """
  return -(logp / num_dims + math.log(bin_width)) / math.log(2.0)
