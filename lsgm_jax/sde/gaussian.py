"""Exact scores and densities when the data are Gaussian: x0 ~ N(mu, s^2) per dimension.

Every process in ``lsgm_jax.sde`` is linear, so its marginal p_t stays Gaussian:
  scalar SDEs (VP, sub-VP, VE): p_t = N(c(t) mu, c(t)^2 s^2 + std(t)^2), where
    (c(t), std(t)) are the kernel's mean coefficient and std (tutorial, perturbation kernel);
  CLD: u_t = (x_t, v_t) with v0 ~ N(0, gamma M) is jointly Gaussian per dimension with
    mean exp(B A) (mu, 0) and covariance = the kernel covariance with initial variances
    (s^2, gamma M) (CLD paper, Sec. 3: the kernel with var0x, var0v).
These give ground-truth score functions for testing samplers, objectives and likelihoods.
``mu`` and ``s`` are floats or arrays broadcastable against one example (``x.shape[1:]``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE, Array, ScoreFn, batch_broadcast
from lsgm_jax.sde.cld import CLD, Cov2, cholesky_2x2

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_per_example(a: Array) -> Array:
  return jnp.sum(jnp.reshape(a, (a.shape[0], -1)), axis=-1)


def gaussian_logp(x: Array, mu: Array | float, s: Array | float) -> Array:
  """log N(x; mu, s^2 I), summed over the non-batch dimensions.

  Args:
    x: ``[B, ...]``.
    mu, s: mean and std, broadcastable against ``x``.

  Returns:
    ``[B]`` log-densities.
  """
  var = jnp.broadcast_to(jnp.square(s), x.shape)
  return _sum_per_example(-0.5 * (_LOG_2PI + jnp.log(var)) - 0.5 * jnp.square(x - mu) / var)


def marginal_moments(sde: SDE, t: Array, x: Array, mu: Array | float,
                     s: Array | float) -> tuple[Array, Array]:
  """Mean and variance of p_t for Gaussian data under a scalar-diffusion SDE.

  Args:
    sde: ``VPSDE``, ``SubVPSDE`` or ``VESDE``.
    t: ``[B]``.
    x: an array of the state's shape ``[B, ...]`` (only its shape is used).
    mu, s: data mean and std.

  Returns:
    (mean, var), each broadcast to ``x.shape``.
  """
  coeff, std = sde.marginal(jnp.ones_like(x), t)
  mean = coeff * mu
  var = jnp.square(coeff) * jnp.square(s) + jnp.square(std)
  return jnp.broadcast_to(mean, x.shape), jnp.broadcast_to(var, x.shape)


def cld_marginal_moments(cld: CLD, t: Array, x: Array, mu: Array | float,
                         s: Array | float) -> tuple[Array, Array, Cov2, Array]:
  """Joint moments of (x_t, v_t) for x0 ~ N(mu, s^2), v0 ~ N(0, gamma M) under CLD.

  Args:
    cld: the process; t: ``[B]``; x: array of the DATA shape ``[B, ..., C]``.
    mu, s: data mean and std (broadcastable against x).

  Returns:
    (mean_x, mean_v, (sxx, sxv, svv), det), all broadcast to ``x.shape``.
  """
  mu_full = jnp.broadcast_to(jnp.asarray(mu, x.dtype), x.shape)
  mean = cld.mean(CLD.join(mu_full, jnp.zeros_like(mu_full)), t)
  mean_x, mean_v = CLD.split(mean)
  var0x = jnp.broadcast_to(jnp.square(jnp.asarray(s, x.dtype)), x.shape)
  t_b = jnp.broadcast_to(batch_broadcast(t, x), x.shape)
  cov, det = cld.marginal_cov(t_b, var0x, cld.hsm_var0v)
  return mean_x, mean_v, cov, det


def gaussian_score_fn(sde: SDE, mu: Array | float, s: Array | float) -> ScoreFn:
  """The exact score of p_t for Gaussian data.

  Args:
    sde: any process of ``lsgm_jax.sde``.
    mu, s: data mean and std per dimension.

  Returns:
    ``score_fn(x, t)``; for ``CLD`` it takes u and returns the VELOCITY score
    grad_v log p_t(u) (shape of v), like a CLD score network.
  """
  if isinstance(sde, CLD):
    def cld_score(u: Array, t: Array) -> Array:
      x, v = CLD.split(u)
      mean_x, mean_v, (sxx, sxv, _), det = cld_marginal_moments(sde, t, x, mu, s)
      # v-row of -Sigma^{-1} (u - mean); Sigma^{-1} = [[svv, -sxv], [-sxv, sxx]] / det.
      return (sxv * (x - mean_x) - sxx * (v - mean_v)) / det
    return cld_score

  def score(x: Array, t: Array) -> Array:
    mean, var = marginal_moments(sde, t, x, mu, s)
    return -(x - mean) / var
  return score


def gaussian_marginal_logp(sde: SDE, x: Array, t: Array, mu: Array | float,
                           s: Array | float) -> Array:
  """log p_t(x) for Gaussian data, ``[B]``; for ``CLD``, x is u and this is the joint
  log-density of (x_t, v_t) (at t = 0: log N(x; mu, s^2) + log N(v; 0, gamma M))."""
  if isinstance(sde, CLD):
    xx, v = CLD.split(x)
    mean_x, mean_v, (sxx, sxv, svv), det = cld_marginal_moments(sde, t, xx, mu, s)
    dx, dv = xx - mean_x, v - mean_v
    quad = (svv * dx**2 - 2.0 * sxv * dx * dv + sxx * dv**2) / det
    return _sum_per_example(-_LOG_2PI - 0.5 * jnp.log(det) - 0.5 * quad)
  mean, var = marginal_moments(sde, t, x, mu, s)
  return gaussian_logp(x, mean, jnp.sqrt(var))


def exact_prior_sde(sde: SDE, mu: tuple[float, ...], s: tuple[float, ...],
                    points: bool = False) -> SDE:
  """A copy of ``sde`` whose ``prior_sample`` draws from the exact p_T of Gaussian data.

  Samplers start from the SDE's prior N(0, ...), which differs from p_T by a tiny mean
  and variance mismatch (for VE with sigma_max = 20, p_T = N(mu, s^2 + 400)); with the
  exact p_T the continuous-time limit of every sampler is exactly p_eps, so the measured
  error is the discretisation error alone (convergence-order tests). With ``points`` (scalar
  SDEs only) the "draw" is deterministic: the batch is [m_T, m_T + sd_T] per dimension
  (``shape[0]`` must be 2), so a deterministic sampler -- an affine map per dimension on
  Gaussian data -- yields its output law N(y0, (y1 - y0)^2) exactly.

  Args:
    sde: VP, sub-VP, VE or CLD.
    mu, s: data mean and std per dimension (tuples, so the SDE stays hashable).
    points: deterministic two-point "prior" (see above).

  Returns:
    An SDE of a subclass of ``type(sde)`` with the same parameters.
  """
  fields = {f.name: getattr(sde, f.name) for f in dataclasses.fields(sde)}
  cls = _EXACT_PRIOR_CLASSES.setdefault(type(sde), _exact_prior_class(type(sde)))
  out = cls.__new__(cls)
  for name, value in {**fields, "mu": tuple(mu), "s": tuple(s), "points": points}.items():
    object.__setattr__(out, name, value)
  return out


_EXACT_PRIOR_CLASSES: dict[type, type] = {}


def _exact_prior_class(base: type) -> type:

  def prior_sample(self, rng: Array, shape: tuple[int, ...]) -> Array:
    mu = jnp.asarray(self.mu)
    s = jnp.asarray(self.s)
    t = jnp.full((shape[0],), self.T)
    if isinstance(self, CLD):
      x_shape = tuple(shape[:-1]) + (shape[-1] // 2,)
      zeros = jnp.zeros(x_shape)
      mean_x, mean_v, cov, det = cld_marginal_moments(self, t, zeros, mu, s)
      l11, l21, l22 = cholesky_2x2(cov, det)
      z_x, z_v = CLD.split(jax.random.normal(rng, shape))
      return CLD.join(mean_x + l11 * z_x, mean_v + l21 * z_x + l22 * z_v)
    zeros = jnp.zeros(shape)
    mean, var = marginal_moments(self, t, zeros, mu, s)
    if self.points:
      if shape[0] != 2:
        raise ValueError(f"the two-point prior needs a batch of 2, got shape {shape}")
      z = jnp.broadcast_to(jnp.arange(2.0).reshape((2,) + (1,) * (len(shape) - 1)), shape)
    else:
      z = jax.random.normal(rng, shape)
    return mean + jnp.sqrt(var) * z

  cls = type(f"ExactPrior{base.__name__}", (base,), {
      "prior_sample": prior_sample, "__annotations__": {}})
  cls.__eq__ = lambda a, b: type(a) is type(b) and a._key() == b._key()
  cls.__hash__ = lambda a: hash(a._key())
  cls._key = lambda a: (tuple(getattr(a, f.name) for f in dataclasses.fields(a)),
                        a.mu, a.s, a.points)
  return cls


def mixture_log_posterior(sde: SDE, x: Array, t: Array, means: Array, s: float,
                          weights: Array) -> Array:
  """log p_t(y = k | x) of a Gaussian mixture p0 = sum_k w_k N(means_k, s^2 I).

  Under a scalar SDE each component stays Gaussian, p_t(x | y = k) =
  N(alpha means_k, (alpha^2 s^2 + std^2) I), so Bayes' rule gives the classifier in closed
  form (the analytic p_t(y | x_t) of the classifier-guidance tests).

  Args:
    sde: VP, sub-VP or VE.
    x: ``[B, D]``; t: ``[B]``.
    means: ``[K, D]`` component means; s: common std; weights: ``[K]`` class priors.

  Returns:
    ``[B, K]`` log-probabilities.
  """
  comp = _mixture_component_logps(sde, x, t, means, s) + jnp.log(weights)
  return comp - jax.nn.logsumexp(comp, axis=-1, keepdims=True)


def _mixture_component_logps(sde: SDE, x: Array, t: Array, means: Array, s: float) -> Array:
  coeff, std = sde.marginal(jnp.ones_like(x), t)  # [B, D], [B, 1]
  var = coeff[:, :1]**2 * s**2 + std**2  # [B, 1]
  diff = x[:, None, :] - coeff[:, None, :] * means[None]  # [B, K, D]
  return (-0.5 * jnp.sum(diff**2, -1) / var
          - 0.5 * x.shape[-1] * jnp.log(2.0 * math.pi * var))


def mixture_score_fn(sde: SDE, means: Array, s: float, weights: Array,
                     label: int | None = None) -> ScoreFn:
  """Exact score of the mixture's p_t (``label=None``) or of one class's p_t(x | y)."""
  means, weights = jnp.asarray(means), jnp.asarray(weights)

  def score(x: Array, t: Array) -> Array:
    def logp(x):
      comp = _mixture_component_logps(sde, x, t, means, s)
      if label is not None:
        return jnp.sum(comp[:, label])
      return jnp.sum(jax.nn.logsumexp(comp + jnp.log(weights), axis=-1))
    return jax.grad(logp)(x)
  return score
