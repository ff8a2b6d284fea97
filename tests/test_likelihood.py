"""Closed-form checks of the probability-flow ODE likelihood and bits/dim.

Data x ~ N(mu, s^2) per dimension (D = 2), so p_t and its score are exact
(``lsgm_jax.sde.gaussian``) and the ODE log-likelihood must reproduce log p_eps(x).
Tolerance: 1e-2 nats per dimension (mean absolute per-example error). The remaining
error is the ODE solve (rtol = atol = 1e-5, float32) plus the prior mismatch at T
(VP's p_1 has mean e^{-5} mu, not 0: up to ~0.005 nats/dim in the tails).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.likelihood import bits_per_dim, cld_log_likelihood_bound, log_likelihood
from lsgm_jax.sde import CLD, VPSDE
from lsgm_jax.sde.gaussian import gaussian_logp, gaussian_marginal_logp, gaussian_score_fn

MU = np.array([0.5, -1.0], np.float32)
S = np.array([0.3, 0.8], np.float32)
B, D = 500, 2
EPS = 1e-5
TOL = 1e-2  # nats per dimension

VP, CLD_SDE = VPSDE(), CLD()
VP_SCORE, CLD_SCORE = gaussian_score_fn(VP, MU, S), gaussian_score_fn(CLD_SDE, MU, S)


def _data(seed: int = 0) -> jax.Array:
  return MU + S * jax.random.normal(jax.random.PRNGKey(seed), (B, D))


def _per_dim_error(logp: jax.Array, exact: jax.Array) -> np.ndarray:
  return np.asarray(logp - exact, np.float64) / D


def test_vp_rademacher_matches_exact_density_per_example():
  """VP with Gaussian data has a diagonal drift Jacobian: Rademacher probes are exact."""
  x = _data()
  logp, nfe = log_likelihood(jax.random.PRNGKey(1), VP, VP_SCORE, x, probe="rademacher",
                             eps=EPS)
  exact = gaussian_marginal_logp(VP, x, jnp.full((B,), EPS), MU, S)
  err = _per_dim_error(logp, exact)
  assert logp.shape == (B,)
  assert np.mean(np.abs(err)) < TOL, np.mean(np.abs(err))
  assert np.max(np.abs(err)) < 2 * TOL
  assert 20 < int(nfe) < 500


def test_vp_gaussian_probe_is_unbiased():
  """Gaussian probes: per-example noise, but the batch mean is within 4 standard errors."""
  x = _data(2)
  logp, _ = log_likelihood(jax.random.PRNGKey(3), VP, VP_SCORE, x, probe="gaussian", eps=EPS)
  err = _per_dim_error(logp, gaussian_marginal_logp(VP, x, jnp.full((B,), EPS), MU, S))
  standard_error = np.std(err) / math.sqrt(B)
  assert abs(np.mean(err)) < 4 * standard_error + TOL / 10, (np.mean(err), standard_error)
  assert np.std(err) > 0.1  # really stochastic: a probe per example


def test_cld_joint_density_matches_exact_joint():
  """CLD: the ODE on u = (x, v0) gives the joint log p_eps(x, v), exact here."""
  x = _data(4)
  v0 = CLD_SDE.init_velocity(jax.random.PRNGKey(5), x)
  u = CLD.join(x, v0)
  logp, nfe = log_likelihood(jax.random.PRNGKey(6), CLD_SDE, CLD_SCORE, u, probe="exact",
                             eps=EPS)
  exact = gaussian_marginal_logp(CLD_SDE, u, jnp.full((B,), EPS), MU, S)
  err = _per_dim_error(logp, exact)
  assert np.mean(np.abs(err)) < TOL, np.mean(np.abs(err))
  assert int(nfe) > 20


def test_cld_bound_matches_data_density():
  """log p(x) >= E_v0[log p(x, v0)] + H[p(v0)], tight here since v0 is independent of x."""
  x = _data(7)
  exact = gaussian_logp(x, MU, S)
  # Single-sample entropy term: per example, log p(x, v0) - log p(v0) = log p(x).
  bound, _ = cld_log_likelihood_bound(jax.random.PRNGKey(8), CLD_SDE, CLD_SCORE, x,
                                      probe="exact", eps=EPS, analytic_entropy=False)
  err = _per_dim_error(bound, exact)
  assert np.mean(np.abs(err)) < TOL, np.mean(np.abs(err))
  # Analytic entropy (CLD-SGM): same expectation, v0-noise per example.
  bound, _ = cld_log_likelihood_bound(jax.random.PRNGKey(8), CLD_SDE, CLD_SCORE, x,
                                      probe="exact", eps=EPS)
  err = _per_dim_error(bound, exact)
  assert abs(np.mean(err)) < 4 * np.std(err) / math.sqrt(B) + TOL / 10


def test_likelihood_is_one_program_without_host_callbacks():
  jaxpr = jax.make_jaxpr(lambda k, x: log_likelihood(k, VP, VP_SCORE, x, probe="rademacher"))(
      jax.random.PRNGKey(0), _data())
  text = str(jaxpr)
  assert "callback" not in text  # no host round trip, not even diffrax's error raise
  assert "while" in text  # the adaptive solve is a loop inside the program


def test_failed_solve_returns_nan():
  logp, nfe = log_likelihood(jax.random.PRNGKey(0), VP, VP_SCORE, _data()[:4],
                             probe="rademacher", max_steps=3)
  assert np.all(np.isnan(np.asarray(logp))) and int(nfe) > 0


def test_bits_per_dim_offsets():
  # 8-bit data on [-1, 1] (bin width 2/256): a uniform density 2^-D gives exactly 8 bits.
  d = 3 * 32 * 32
  np.testing.assert_allclose(bits_per_dim(jnp.array([-d * math.log(2.0)]), d), 8.0,
                             rtol=1e-6)
  # logp = 0 per dim: the offset alone, -log2(2/256) = 7 bits (score_sde's offset).
  np.testing.assert_allclose(bits_per_dim(jnp.zeros(2), d), 7.0, rtol=1e-6)
  # x = k / 127.5 - 1 convention: offset log2(127.5).
  np.testing.assert_allclose(bits_per_dim(jnp.zeros(1), d, bin_width=1 / 127.5),
                             math.log2(127.5), rtol=1e-6)
  # Data in [0, 1]: offset 8 bits.
  np.testing.assert_allclose(bits_per_dim(jnp.zeros(1), d, bin_width=1 / 256), 8.0, rtol=1e-6)


def test_invalid_probe_and_sde_raise():
  with pytest.raises(ValueError, match="gaussian, rademacher, exact"):
    log_likelihood(jax.random.PRNGKey(0), VP, VP_SCORE, _data(), probe="sphere")
  with pytest.raises(ValueError, match="CLD"):
    cld_log_likelihood_bound(jax.random.PRNGKey(0), VP, VP_SCORE, _data())
