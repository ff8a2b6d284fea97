"""Latent CLD: LSGM's score-based prior with the critically-damped Langevin diffusion.

The latents z_0 (``[B, h, w, C]``) are augmented with a velocity v_0 ~ N(0, gamma M I)
and diffused by CLD (``sde/cld.py``) on u = (z, v) (``[B, h, w, 2C]``); the network sees
u and predicts the velocity part (C channels), as in CLD-SGM.

Mixed score (LSGM "mixed score" carried over to CLD). LSGM mixes the network with the
exact score of Normal latents; here that is the exact velocity score of the diffused
N(0, I) x N(0, gamma M I):

  s_N(u, t) = (Sigma_xv z - Sigma_xx v) / det Sigma,   Sigma = marginal_cov(t, 1, gamma M),
  s(u, t)   = (1 - alpha) s_N(u, t) + alpha (-l_t) net(u, t),  alpha = sigmoid(mixing_logit),

with -l_t the kernel's noise multiplier of the training objective (CLD-SGM's
parameterisation: the network predicts eps_v). With alpha = 0 the prior is exactly
N(0, I) on z. (CLD-SGM's own "mixed score" adds -v / Sigma_vv(t; 0, gamma M), the score of
a point mass at x = 0, which is the right reference for data but not for LSGM's latents.)

Cross entropy (the VAE's KL term). For the linear SDE du = f dt + G dw with G = diag(0,
sqrt(2 Gamma beta)) started from q_0 = q(z_0) x N(0, gamma M I), the argument of LSGM
Theorem 1 (KL bound along the diffusion, with the entropy production of the data and of
the kernel cancelling the divergence of f) gives, per example,

  CE(q_eps || p_eps) <= int_eps^1 Gamma beta(t) E||s_v(u_t, t) + l_t eps_v||^2 dt
                        + H[q(u_eps | .)] + (CE(q_1 || p_1) - H[q(u_1 | .)]),

where the kernel q(u_t | .) is conditioned on (z_0, v_0) for DSM (``var0v = 0``) or on
z_0 alone with v_0 marginalised for HSM (``var0v = gamma M``; CLD paper Sec. 3), with
entropy D/2 log((2 pi e)^2 det Sigma_t) (D latent dims), and the weight Gamma beta =
g^2 / 2 is the likelihood weighting of ``objectives/hsm.py``. The bound is tight when the
score is the exact one of p, as LSGM's. Then, since -log p(z) <= E_{v ~ r}[-log p(z, v)
+ log r(v)] for r = N(0, gamma M I) (CLD paper, likelihood section),

  CE(q(z) || p(z)) <= CE(q(z, v) || p(z, v)) - H[N(0, gamma M I)],

which makes the per-dimension constant 1/2 log((2 pi e)^2 det Sigma_eps) - 1/2 log(2 pi e
gamma M). The terminal bracket is dropped in training (as LSGM's ``kl_T = 0``) and can
be added (``include_terminal``). At evaluation the probability-flow ODE bound
(``likelihood.cld_log_likelihood_bound``) replaces the score-matching estimate.

The time eps must be small (default 1e-5): v's variance gamma M = 0.01 grows by about
2 Gamma beta t, so at t = 1e-3 the joint has already moved ~0.1 nat/dim from
q(z) x N(0, gamma M) (measured; CLD-SGM also trains from 1e-5).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from lsgm_jax.objectives.lsgm import CrossEntropy
from lsgm_jax.sde.base import Array, ScoreFn, batch_broadcast
from lsgm_jax.sde.cld import CLD

Objective = Literal["hsm", "dsm"]
NetFn = Callable[[Array, Array], Array]
"""``net_fn(u_t, t) -> [shape of z]``: the network's eps_v prediction before mixing."""


def objective_var0v(cld: CLD, objective: str) -> float:
  """Initial velocity variance of the kernel: gamma M (HSM) or 0 (DSM, v_0 drawn)."""
  if objective == "hsm":
    return cld.hsm_var0v
  if objective == "dsm":
    return 0.0
  raise ValueError(f"objective must be 'hsm' or 'dsm', got {objective!r}")


def gaussian_velocity_score(cld: CLD, u: Array, t: Array, var_z: Array | float) -> Array:
  """Exact velocity score of the diffused N(0, var_z I) x N(0, gamma M I).

  Args:
    cld: the process.
    u: state ``[B, ..., 2C]``.
    t: times ``[B]``.
    var_z: latent variance (scalar, or broadcastable per channel ``[C]``).

  Returns:
    ``[B, ..., C]``: (Sigma_xv z - Sigma_xx v) / det, Sigma = marginal_cov(t, var_z, gamma M).
  """
  z, v = CLD.split(u)
  t_b = batch_broadcast(t, z)
  (sxx, sxv, _), det = cld.marginal_cov(t_b, var_z, cld.hsm_var0v)
  return (sxv * z - sxx * v) / det


def make_mixed_velocity_score_fn(cld: CLD, net_fn: NetFn, mixing_logit: Array | None,
                                 objective: str = "hsm") -> ScoreFn:
  """The latent CLD prior's velocity score (module docstring's mixed score).

  Args:
    cld: the process.
    net_fn: network eps_v prediction ``net_fn(u_t, t)``.
    mixing_logit: ``[C]`` logits, or None for the plain CLD-SGM parameterisation
      s = -l_t net.
    objective: "hsm" or "dsm" (which kernel's l_t scales the network).

  Returns:
    ``score_fn(u, t) -> [B, ..., C]``.
  """
  var0v = objective_var0v(cld, objective)

  def score_fn(u: Array, t: Array) -> Array:
    net = net_fn(u, t)
    scaled = batch_broadcast(cld.noise_multiplier(t, 0.0, var0v), net) * net
    if mixing_logit is None:
      return scaled
    alpha = jax.nn.sigmoid(mixing_logit).astype(net.dtype)
    return (1.0 - alpha) * gaussian_velocity_score(cld, u, t, 1.0) + alpha * scaled

  return score_fn


def cross_entropy_const(cld: CLD, time_eps: float, objective: str) -> Array:
  """Per dimension: H[q(u_eps | .)] - H[N(0, gamma M)] = log(2 pi e) + 1/2 log det
  Sigma_eps - 1/2 log(2 pi e gamma M), Sigma_eps the objective's kernel covariance."""
  _, det = cld.marginal_cov(jnp.asarray(time_eps, jnp.float32), 0.0,
                            objective_var0v(cld, objective))
  return (1.0 + math.log(2.0 * math.pi) + 0.5 * jnp.log(det)
          - 0.5 * (1.0 + math.log(2.0 * math.pi * cld.hsm_var0v)))


def terminal_cross_entropy(rng: Array, cld: CLD, z0: Array, objective: str = "hsm") -> Array:
  """One-sample CE(q_1 || p_1) - H[q(u_1 | .)] per example (dropped in training)."""
  var0v = objective_var0v(cld, objective)
  rng_v, rng_u = jax.random.split(rng)
  v0 = cld.init_velocity(rng_v, z0) if objective == "dsm" else jnp.zeros_like(z0)
  ones = jnp.ones((z0.shape[0],), jnp.float32)
  u1, _, _ = cld.sample_marginal(rng_u, CLD.join(z0, v0), ones, 0.0, var0v)
  _, det = cld.marginal_cov(jnp.float32(1.0), 0.0, var0v)
  dim = math.prod(z0.shape[1:])
  entropy = 0.5 * dim * (2.0 * (1.0 + math.log(2.0 * math.pi)) + jnp.log(det))
  return -cld.prior_logp(u1) - entropy


def sample_time(rng: Array, batch: int, time_eps: float, log_uniform: bool
                ) -> tuple[Array, Array]:
  """t on [eps, 1] and 1 / p(t): uniform, or log-uniform (p(t) = 1 / (t log(1 / eps))).

  The kernel's velocity score has E||l_t eps_v||^2 = l_t^2 ~ 1 / t as t -> 0 for both
  DSM and HSM (x_t and v_t become perfectly correlated, det Sigma / Sigma_xx ~ t), so
  under uniform t the likelihood-weighted integrand has infinite-looking variance
  (~1 / eps); log-uniform t makes t x integrand bounded (the role of LSGM's ``ll_iw``).
  """
  rho = jax.random.uniform(rng, (batch,), jnp.float32)
  if log_uniform:
    if not 0.0 < time_eps < 1.0:
      raise ValueError(f"log-uniform t needs 0 < time_eps < 1, got {time_eps}")
    log_range = -math.log(time_eps)
    t = time_eps * jnp.exp(rho * log_range)
    return t, t * log_range
  return time_eps + (1.0 - time_eps) * rho, jnp.full((batch,), 1.0 - time_eps)


def _draw(rng: Array, cld: CLD, z0: Array, objective: str, time_eps: float,
          log_uniform: bool):
  """t with 1 / p(t), u_t from the objective's kernel, eps_v and -l_t."""
  rng_t, rng_v, rng_u = jax.random.split(rng, 3)
  t, inv_p = sample_time(rng_t, z0.shape[0], time_eps, log_uniform)
  var0v = objective_var0v(cld, objective)
  v0 = cld.init_velocity(rng_v, z0) if objective == "dsm" else jnp.zeros_like(z0)
  u_t, eps, noise_mult = cld.sample_marginal(rng_u, CLD.join(z0, v0), t, 0.0, var0v)
  return t, inv_p, u_t, CLD.split(eps)[1], noise_mult


def likelihood_term(cld: CLD, score_v: Array, eps_v: Array, noise_mult: Array, t: Array,
                    inv_p: Array) -> Array:
  """Per variable Gamma beta(t) / p(t) (s_v - (-l_t) eps_v)^2: the estimate, from t ~ p,
  of int_eps^1 Gamma beta E||s_v + l_t eps_v||^2 dt (``hsm.cld_loss``'s likelihood
  weighting)."""
  weight = inv_p * cld.damping * cld.beta(t)
  return batch_broadcast(weight, score_v) * jnp.square(score_v - noise_mult * eps_v)


def cross_entropy(rng: Array, cld: CLD, score_fn: ScoreFn, z0: Array, *,
                  objective: str = "hsm", time_eps: float = 1e-5,
                  log_uniform_t: bool = True, include_terminal: bool = False
                  ) -> CrossEntropy:
  """Score-matching bound on CE(q(z_0|x) || p(z_0)) for the latent CLD prior.

  Args:
    rng: PRNG key.
    cld: the process.
    score_fn: velocity score ``score_fn(u_t, t)`` (e.g. ``make_mixed_velocity_score_fn``).
    z0: encoder samples ``[B, ..., C]``.
    objective: "hsm" (v_0 marginalised) or "dsm" (v_0 drawn).
    time_eps: lower end of the time integral.
    log_uniform_t: importance-sample t log-uniformly (``sample_time``); else uniform.
    include_terminal: add ``terminal_cross_entropy``.

  Returns:
    ``CrossEntropy`` (per example ``[B]``; per latent variable ``[B, ..., C]``).
  """
  rng_d, rng_1 = jax.random.split(rng)
  t, inv_p, u_t, eps_v, noise_mult = _draw(rng_d, cld, z0, objective, time_eps,
                                           log_uniform_t)
  per_var = likelihood_term(cld, score_fn(u_t, t), eps_v, noise_mult, t, inv_p)
  per_var = per_var + cross_entropy_const(cld, time_eps, objective)
  total = jnp.sum(jnp.reshape(per_var, (z0.shape[0], -1)), axis=-1)
  if include_terminal:
    total = total + terminal_cross_entropy(rng_1, cld, z0, objective)
  return CrossEntropy(total, per_var)
