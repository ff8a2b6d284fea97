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

  @jax.jit
  def run(t_val):
    t = jnp.full((n,), t_val)
    x_t, z, std = sde.sample_marginal(jax.random.PRNGKey(1), x0, t)
    mean, std_f = sde.marginal(x0, t)
    return x_t, z, std, mean, std_f

  for t_val in (0.05, 0.6):
    x_t, z, std, mean, std_f = run(t_val)
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
  s0 = S
  if isinstance(sde, VESDE):  # score_sde convention: x(0) already carries sigma_min noise
    s0 = math.sqrt(S**2 + sde.sigma_min**2)
  dt = 1.0 / steps

  @jax.jit
  def simulate(key):
    rng0, rng = jax.random.split(key)
    x = MU + s0 * jax.random.normal(rng0, (n, d))

    def step(x, i):
      t = jnp.full((n,), i * dt)
      drift, g = sde.sde(x, t)
      z = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
      return x + drift * dt + g * math.sqrt(dt) * z, None

    x, _ = jax.lax.scan(step, x, jnp.arange(steps))
    mean, var = marginal_moments(sde, jnp.ones((1,)), x[:1, :1], MU, S)
    return jnp.mean(x), jnp.var(x), mean[0, 0], var[0, 0]

  m_emp, v_emp, mean, var = (float(a) for a in simulate(jax.random.PRNGKey(2)))
  assert abs(m_emp - mean) < 5 * math.sqrt(var / (n * d))
  assert abs(v_emp / var - 1) < 0.04


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_probability_flow_is_consistent_with_marginal(sde):
  """For Gaussian data the PF ODE is dx/dt = a x + b; then d var/dt must equal 2 a var."""
  score_fn = gaussian_score_fn(sde, MU, S)
  x = jnp.array([[0.0], [1.0]])
  h = 1e-3

  @jax.jit
  def compute(t_val):
    t = jnp.full((2,), t_val)
    drift, g = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    var = [marginal_moments(sde, t + dt, x, MU, S)[1][0, 0] for dt in (-h, 0.0, h)]
    f, g_fwd = sde.sde(x, t)
    rev_drift, g_rev = sde.reverse(score_fn).sde(x, t)
    return drift, g, var, f, g_fwd, rev_drift, g_rev, score_fn(x, t)

  for t_val in (0.1, 0.4, 0.8):
    drift, g, (v_lo, v, v_hi), f, g_fwd, rev_drift, g_rev, score = compute(t_val)
    assert float(jnp.max(jnp.abs(g))) == 0.0
    a = float(drift[1, 0] - drift[0, 0])
    dvar = float(v_hi - v_lo) / (2 * h)
    assert abs(dvar - 2 * a * float(v)) < 2e-3 * max(1.0, abs(dvar))
    # The reverse SDE doubles the score term.
    np.testing.assert_allclose(rev_drift, f - g_fwd**2 * score, rtol=1e-6)
    np.testing.assert_allclose(g_rev, g_fwd)


def test_discretize_composes_to_marginal():
  """DDPM / SMLD steps t - dt -> t compose to the continuous kernel exactly."""
  n_steps = 50
  dt = 1.0 / n_steps
  x = jnp.ones((n_steps, 1))
  t = jnp.arange(1, n_steps + 1) * dt
  for sde in (VPSDE(), VESDE()):
    f, g = jax.jit(sde.discretize, static_argnums=2)(x, t, dt)
    a = 1.0 + np.asarray(f[:, 0], np.float64)  # f = (a - 1) x for x = 1
    coeff, var = 1.0, 0.0
    for a_i, g_i in zip(a, np.asarray(g[:, 0], np.float64)):
      coeff, var = coeff * a_i, var * a_i**2 + g_i**2
    c, std = sde.marginal(x[:1], jnp.ones((1,)))
    assert abs(coeff - float(c[0, 0])) < 1e-5
    # VP: exact transitions; VE: the first step starts from sigma = 0, so the sum
    # telescopes to sigma(1)^2.
    assert abs(var / float(std[0, 0])**2 - 1) < 1e-5

  @jax.jit
  def others(x, t):
    svp = SubVPSDE()
    score_fn = gaussian_score_fn(VPSDE(), MU, S)
    return (svp.discretize(x, t, 0.01), svp.sde(x, t),
            VPSDE().reverse(score_fn).discretize(x, t, 0.01), VPSDE().discretize(x, t, 0.01),
            score_fn(x, t))

  (f, g), (drift, diff), (rf, rg), (vf, vg), score = others(x[:1], jnp.full((1,), 0.5))
  # sub-VP falls back to Euler-Maruyama.
  np.testing.assert_allclose(f, drift * 0.01, rtol=1e-6)
  np.testing.assert_allclose(g, diff * 0.1, rtol=1e-6)
  # Reverse discretisation (reverse-diffusion predictor): f - G^2 score.
  np.testing.assert_allclose(rf, vf - vg**2 * score, rtol=1e-6)
  np.testing.assert_allclose(rg, vg)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior(sde):
  z = jax.random.normal(jax.random.PRNGKey(3), (5, 2, 3, 1))
  prior_std = 50.0 if isinstance(sde, VESDE) else 1.0
  grid = np.linspace(-8, 8, 4001) * prior_std

  @jax.jit
  def compute(z, grid):
    return (sde.prior_logp(z), sde.prior_logp(grid[:, None]),
            jnp.std(sde.prior_sample(jax.random.PRNGKey(4), (20000, 2))))

  lp, lp_grid, std = compute(z, jnp.asarray(grid, jnp.float32))
  assert lp.shape == (5,)
  d = 6
  expected = (-0.5 * d * np.log(2 * np.pi * prior_std**2)
              - 0.5 * np.sum(np.asarray(z).reshape(5, -1)**2, -1) / prior_std**2)
  np.testing.assert_allclose(lp, expected, rtol=1e-5)
  # 1-D density integrates to one.
  assert abs(np.trapezoid(np.exp(np.asarray(lp_grid, np.float64)), grid) - 1) < 1e-4
  assert abs(float(std) / prior_std - 1) < 0.02


def test_gaussian_helpers():
  sde = VPSDE()
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 4))
  t = jnp.array([0.01, 0.3, 0.9])

  @jax.jit
  def compute(x, t):
    grad = jax.grad(lambda y: jnp.sum(gaussian_marginal_logp(sde, y, t, MU, S)))(x)
    return (grad, gaussian_score_fn(sde, MU, S)(x, t), gaussian_logp(x, MU, S),
            gaussian_marginal_logp(sde, x, jnp.full((3,), 1e-6), MU, S))

  grad, score, lp, lp0 = compute(x, t)
  # The exact score is the gradient of the exact marginal log-density.
  np.testing.assert_allclose(grad, score, rtol=1e-5, atol=1e-5)
  # gaussian_logp is the Normal log-density summed over dimensions.
  ref = np.sum(-0.5 * np.log(2 * np.pi * S**2) - 0.5 * (np.asarray(x) - MU)**2 / S**2, -1)
  np.testing.assert_allclose(lp, ref, rtol=1e-5)
  # At t -> 0 the marginal is the data distribution (up to the kernel's tiny std).
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
