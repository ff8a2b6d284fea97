"""Closed-form and Monte Carlo checks of the scalar-diffusion SDEs (VP, sub-VP, VE)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.sde import SubVPSDE, VESDE, VPSDE
from lsgm_jax.sde.gaussian import (gaussian_logp, gaussian_marginal_logp, gaussian_score_fn,
                                   marginal_moments)

SDES = [VPSDE(), SubVPSDE(), VESDE()]
IDS = ["vp", "subvp", "ve"]
MU, S = 0.5, 0.3  # Gaussian data x0 ~ N(MU, S^2) per dimension


def test_closed_forms():
  t = jnp.array([1e-5, 0.1, 0.5, 1.0])
  x = jnp.ones((4, 3))
  vp, svp, ve = SDES
  big_b = 0.1 * t + 0.5 * 19.9 * t**2  # tutorial, VP SDE: int_0^t beta
  c, std = vp.marginal(x, t)
  np.testing.assert_allclose(c[:, 0], np.exp(-0.5 * big_b), rtol=1e-6)
  np.testing.assert_allclose(std[:, 0]**2, -np.expm1(-np.asarray(big_b, np.float64)), rtol=1e-5)
  c2, std2 = svp.marginal(x, t)
  np.testing.assert_allclose(c2, c, rtol=1e-6)
  np.testing.assert_allclose(std2[:, 0], -np.expm1(-np.asarray(big_b, np.float64)), rtol=1e-5)
  m, sig = ve.marginal(x, t)
  np.testing.assert_array_equal(m, x)
  np.testing.assert_allclose(sig[:, 0], 0.01 * (5000.0 ** np.asarray(t)), rtol=1e-5)
  # float32 std near t = 0 keeps its digits (expm1): std^2 ~ beta_min t.
  assert abs(float(std[0, 0])**2 / (0.1 * 1e-5) - 1) < 1e-3
  # diffusion^2 = d var / dt for VE; = beta (1 - e^{-2B}) for sub-VP.
  _, g = ve.sde(x, t)
  np.testing.assert_allclose(g[:, 0]**2, 2 * np.log(5000.0) * np.asarray(sig[:, 0])**2, rtol=1e-5)
  _, g = svp.sde(x, t)
  np.testing.assert_allclose(g[:, 0]**2, (0.1 + 19.9 * t) * -np.expm1(-2 * big_b), rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_monte_carlo(sde):
  n, d = 20000, 2
  x0 = jnp.full((n, d), 0.7)
  for t_val in (0.05, 0.6):
    t = jnp.full((n,), t_val)
    x_t, z, std = sde.sample_marginal(jax.random.PRNGKey(1), x0, t)
    mean, std_f = sde.marginal(x0, t)
    np.testing.assert_allclose(x_t, mean + std * z, rtol=1e-6, atol=1e-6)
    emp_mean = np.mean(np.asarray(x_t), 0)
    emp_std = np.std(np.asarray(x_t), 0)
    s = float(std_f[0, 0])
    assert np.all(np.abs(emp_mean - float(mean[0, 0])) < 5 * s / math.sqrt(n))
    assert np.all(np.abs(emp_std / s - 1) < 5 / math.sqrt(2 * n))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_forward_euler_matches_marginal(sde):
  """Euler-Maruyama on the forward SDE reproduces the Gaussian marginal (mean, var)."""
  n, d, steps = 4000, 4, 500
  rng0, rng = jax.random.split(jax.random.PRNGKey(2))
  s0 = S
  if isinstance(sde, VESDE):  # score_sde convention: x(0) already carries sigma_min noise
    s0 = math.sqrt(S**2 + sde.sigma_min**2)
  x = MU + s0 * jax.random.normal(rng0, (n, d))
  dt = 1.0 / steps

  def step(x, i):
    t = jnp.full((n,), i * dt)
    drift, g = sde.sde(x, t)
    z = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    return x + drift * dt + g * math.sqrt(dt) * z, None

  x, _ = jax.lax.scan(step, x, jnp.arange(steps))
  mean, var = marginal_moments(sde, jnp.ones((n,)), x, MU, S)
  v = float(var[0, 0])
  assert abs(float(jnp.mean(x)) - float(mean[0, 0])) < 5 * math.sqrt(v / (n * d))
  assert abs(float(jnp.var(x)) / v - 1) < 0.04


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_probability_flow_is_consistent_with_marginal(sde):
  """For Gaussian data the PF ODE is dx/dt = a x + b; then d var/dt must equal 2 a var."""
  score_fn = gaussian_score_fn(sde, MU, S)
  rev = sde.reverse(score_fn, probability_flow=True)
  x = jnp.array([[0.0], [1.0]])
  for t_val in (0.1, 0.4, 0.8):
    t = jnp.full((2,), t_val)
    drift, g = rev.sde(x, t)
    assert float(jnp.max(jnp.abs(g))) == 0.0
    a = float(drift[1, 0] - drift[0, 0])
    h = 1e-3
    _, v_hi = marginal_moments(sde, t + h, x, MU, S)
    _, v_lo = marginal_moments(sde, t - h, x, MU, S)
    _, v = marginal_moments(sde, t, x, MU, S)
    dvar = float(v_hi[0, 0] - v_lo[0, 0]) / (2 * h)
    assert abs(dvar - 2 * a * float(v[0, 0])) < 2e-3 * max(1.0, abs(dvar))
  # The reverse SDE doubles the score term.
  rev_sde = sde.reverse(score_fn)
  t = jnp.full((2,), 0.3)
  f, g = sde.sde(x, t)
  drift, g_rev = rev_sde.sde(x, t)
  np.testing.assert_allclose(drift, f - g**2 * score_fn(x, t), rtol=1e-6)
  np.testing.assert_allclose(g_rev, g)


def test_discretize_composes_to_marginal():
  """DDPM / SMLD steps t - dt -> t compose to the continuous kernel exactly."""
  n_steps = 50
  dt = 1.0 / n_steps
  x = jnp.ones((1, 1))
  for sde in (VPSDE(), VESDE()):
    coeff, var = 1.0, 0.0
    for i in range(1, n_steps + 1):
      t = jnp.full((1,), i * dt)
      f, g = sde.discretize(x, t, dt)
      a = 1.0 + float(f[0, 0])  # f = (a - 1) x for x = 1
      coeff, var = coeff * a, var * a**2 + float(g[0, 0])**2
    c, std = sde.marginal(x, jnp.ones((1,)))
    assert abs(coeff - float(c[0, 0])) < 1e-5
    if isinstance(sde, VPSDE):
      assert abs(var / float(std[0, 0])**2 - 1) < 1e-5
    else:  # the first step starts from sigma = 0, so the sum telescopes to sigma(1)^2
      assert abs(var / float(std[0, 0])**2 - 1) < 1e-5
  # sub-VP falls back to Euler-Maruyama.
  svp = SubVPSDE()
  t = jnp.full((1,), 0.5)
  f, g = svp.discretize(x, t, 0.01)
  drift, diff = svp.sde(x, t)
  np.testing.assert_allclose(f, drift * 0.01, rtol=1e-6)
  np.testing.assert_allclose(g, diff * 0.1, rtol=1e-6)
  # Reverse discretisation (reverse-diffusion predictor): f - G^2 score.
  score_fn = gaussian_score_fn(VPSDE(), MU, S)
  rf, rg = VPSDE().reverse(score_fn).discretize(x, t, 0.01)
  f, g = VPSDE().discretize(x, t, 0.01)
  np.testing.assert_allclose(rf, f - g**2 * score_fn(x, t), rtol=1e-6)
  np.testing.assert_allclose(rg, g)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior(sde):
  z = jax.random.normal(jax.random.PRNGKey(3), (5, 2, 3, 1))
  prior_std = 50.0 if isinstance(sde, VESDE) else 1.0
  lp = sde.prior_logp(z)
  assert lp.shape == (5,)
  d = 6
  expected = (-0.5 * d * np.log(2 * np.pi * prior_std**2)
              - 0.5 * np.sum(np.asarray(z).reshape(5, -1)**2, -1) / prior_std**2)
  np.testing.assert_allclose(lp, expected, rtol=1e-5)
  # 1-D density integrates to one.
  grid = np.linspace(-8, 8, 4001) * prior_std
  dens = np.exp(np.asarray(sde.prior_logp(jnp.asarray(grid, jnp.float32)[:, None])))
  assert abs(np.trapezoid(dens, grid) - 1) < 1e-4
  samples = sde.prior_sample(jax.random.PRNGKey(4), (20000, 2))
  assert abs(float(jnp.std(samples)) / prior_std - 1) < 0.02


def test_gaussian_helpers():
  sde = VPSDE()
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 4))
  t = jnp.array([0.01, 0.3, 0.9])
  # The exact score is the gradient of the exact marginal log-density.
  grad = jax.grad(lambda y: jnp.sum(gaussian_marginal_logp(sde, y, t, MU, S)))(x)
  np.testing.assert_allclose(grad, gaussian_score_fn(sde, MU, S)(x, t), rtol=1e-5, atol=1e-5)
  # gaussian_logp is the Normal log-density summed over dimensions.
  lp = gaussian_logp(x, MU, S)
  ref = np.sum(-0.5 * np.log(2 * np.pi * S**2) - 0.5 * (np.asarray(x) - MU)**2 / S**2, -1)
  np.testing.assert_allclose(lp, ref, rtol=1e-5)
  # At t -> 0 the marginal is the data distribution (up to the kernel's tiny std).
  lp0 = gaussian_marginal_logp(sde, x, jnp.full((3,), 1e-6), MU, S)
  np.testing.assert_allclose(lp0, lp, rtol=1e-4)


def test_ve_sigmas():
  ve = VESDE()
  s = ve.discrete_sigmas(10)
  np.testing.assert_allclose(s[0], 0.01, rtol=1e-5)
  np.testing.assert_allclose(s[-1], 50.0, rtol=1e-5)
  np.testing.assert_allclose(s[1:] / s[:-1], (5000.0) ** (1 / 9), rtol=1e-4)
  np.testing.assert_allclose(ve.sigma(jnp.linspace(0, 1, 10)), s, rtol=1e-5)
  np.testing.assert_allclose(ve.transition_alpha(jnp.ones(3), 0.1), 1.0)
  vp = VPSDE()
  alpha = vp.transition_alpha(jnp.array([0.5]), 0.001)
  np.testing.assert_allclose(alpha, np.exp(-(0.1 + 19.9 * 0.4995) * 0.001), rtol=1e-5)
