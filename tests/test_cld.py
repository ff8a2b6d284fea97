"""Checks of the CLD process: kernel formulas, float32 stability, Monte Carlo, SSCS helpers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.sde import CLD, cld_mixed_score
from lsgm_jax.sde.cld import cholesky_2x2
from lsgm_jax.sde.gaussian import (cld_marginal_moments, gaussian_logp, gaussian_marginal_logp,
                                   gaussian_score_fn)

CLD_DEFAULT = CLD()  # beta 4, M^{-1} 4, gamma 0.04, numerical_eps 1e-9
MU, S = 0.3, 0.5


def _ode_moments(cld, t_end, m0, var0x, var0v, steps=2000):
  """float64 RK4 of dm/dt = beta A m and dS/dt = beta (A S + S A^T + D): independent of
  the closed forms in cld.py (CLD paper, Sec. 3: linear SDE moment equations)."""
  gam, m_inv = cld.damping, cld.m_inv
  a = np.array([[0.0, m_inv], [-1.0, -gam * m_inv]])
  dmat = np.diag([0.0, 2.0 * gam])

  def f(t, y):
    beta = cld.beta0 + cld.beta1 * t
    m, cov = y[:2], y[2:].reshape(2, 2)
    return np.concatenate([beta * a @ m, (beta * (a @ cov + cov @ a.T + dmat)).ravel()])

  y = np.concatenate([np.asarray(m0, np.float64), np.diag([var0x, var0v]).ravel()])
  h = t_end / steps
  for i in range(steps):
    t = i * h
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  return y[:2], y[2:].reshape(2, 2)


@pytest.mark.parametrize("cld", [CLD(numerical_eps=0.0), CLD(2.0, 6.0, 2.0, 0.1, 0.0)],
                         ids=["paper", "linear_beta"])
def test_kernel_matches_moment_ode(cld):
  m0 = np.array([0.8, -0.3])
  for t_val in (0.05, 0.4, 1.0):
    for var0x, var0v in ((0.0, 0.0), (0.0, cld.hsm_var0v), (0.7, 0.2)):
      m_ref, cov_ref = _ode_moments(cld, t_val, m0, var0x, var0v, steps=400)
      u0 = jnp.asarray(m0[None], jnp.float32)
      mean, (sxx, sxv, svv) = cld.marginal(u0, jnp.array([t_val]), var0x, var0v)
      np.testing.assert_allclose(mean[0], m_ref, rtol=1e-5, atol=1e-6)
      got = np.array([[sxx[0, 0], sxv[0, 0]], [sxv[0, 0], svv[0, 0]]])
      np.testing.assert_allclose(got, cov_ref, rtol=1e-5, atol=1e-7)
      _, det = cld.marginal_cov(jnp.array([t_val]), var0x, var0v)
      np.testing.assert_allclose(det[0], np.linalg.det(cov_ref), rtol=1e-5)


def test_kernel_float32_stable_against_float64():
  """CLD-SGM issue 6: the kernel must stay PD and accurate in float32 down to t = loss_eps."""
  t64 = np.concatenate([np.geomspace(1e-5, 1.0, 60), [0.5, 1.0]])
  u = np.ones((3, 2))
  t_ou = np.array([1.0, 0.5, 2e-3])
  for cld in (CLD(), CLD(numerical_eps=0.0)):

    @jax.jit
    def kernel(t, var0v, u, t_ou):
      (sxx, sxv, svv), det = cld.marginal_cov(t, 0.0, var0v)
      l11, l21, l22 = cholesky_2x2((sxx, sxv, svv), det)
      out = dict(sxx=sxx, sxv=sxv, svv=svv, det=det, l11=l11, l21=l21, l22=l22,
                 nm=cld.noise_multiplier(t, 0.0, var0v))
      # SSCS half steps, also near t = 1 where B(t) ~ 4 >> the step's integral.
      return out, cld.ou_step_mean_cov(u, t_ou, 5e-4)

    for var0v in (0.0, cld.hsm_var0v):  # DSM and HSM initial variances
      f32, ou32 = kernel(jnp.asarray(t64, jnp.float32), var0v, jnp.asarray(u, jnp.float32),
                         jnp.asarray(t_ou, jnp.float32))
      with jax.enable_x64(True):
        f64, ou64 = jax.tree_util.tree_map(
            np.asarray, kernel(jnp.asarray(t64), var0v, jnp.asarray(u), jnp.asarray(t_ou)))
      assert f64["det"].dtype == np.float64
      for k, v in f32.items():
        v = np.asarray(v)
        assert v.dtype == np.float32 and np.all(np.isfinite(v)), k
        np.testing.assert_allclose(v, f64[k], rtol=1e-5, err_msg=f"{k} var0v={var0v}")
      assert np.all(np.asarray(f32["sxx"]) > 0) and np.all(np.asarray(f32["det"]) > 0)
      for a32, a64 in zip(jax.tree_util.tree_leaves(ou32), jax.tree_util.tree_leaves(ou64)):
        np.testing.assert_allclose(a32, a64, rtol=1e-5, atol=1e-7)
      # The Cholesky factor reproduces the covariance.
      np.testing.assert_allclose(np.asarray(f32["l21"])**2 + np.asarray(f32["l22"])**2,
                                 f64["svv"], rtol=1e-5)


def test_kernel_small_t_closed_form():
  """Leading-order small-t behaviour, eps = 0: Sxx ~ (2/3) Gamma beta^3 M^-2 t^3 (DSM)."""
  cld = CLD(numerical_eps=0.0)
  t = jnp.array([1e-5, 1e-4], jnp.float32)
  (sxx, sxv, svv), _ = cld.marginal_cov(t, 0.0, 0.0)
  b = 4.0 * np.asarray(t, np.float64)
  gam, m_inv = cld.damping, cld.m_inv
  # v gets 2 Gamma B, x integrates m_inv v: Sxv ~ Gamma m_inv B^2, Sxx ~ (2/3) Gamma m_inv^2 B^3.
  np.testing.assert_allclose(svv, 2 * gam * b, rtol=2e-3)
  np.testing.assert_allclose(sxv, gam * m_inv * b**2, rtol=2e-3)
  np.testing.assert_allclose(sxx, 2 / 3 * gam * m_inv**2 * b**3, rtol=2e-3)


@pytest.mark.parametrize("objective", ["dsm", "hsm"])
def test_sample_marginal_monte_carlo(objective):
  cld = CLD()
  n = 20000
  x0 = jnp.full((n, 1), 0.8)
  rng_v, rng = jax.random.split(jax.random.PRNGKey(0))
  if objective == "dsm":  # draw v0 ~ N(0, gamma M), then condition on it
    u0 = CLD.join(x0, cld.init_velocity(rng_v, x0))
    var0v = 0.0
  else:  # marginalise v0
    u0 = CLD.join(x0, jnp.zeros_like(x0))
    var0v = cld.hsm_var0v

  @jax.jit
  def run(t_val):
    t = jnp.full((n,), t_val)
    u_t, eps, nm = cld.sample_marginal(rng, u0, t, 0.0, var0v)
    # Both objectives describe the same law of u_t given x0: the HSM kernel.
    mean, cov = cld.marginal(CLD.join(x0[:1], 0 * x0[:1]), t[:1], 0.0, cld.hsm_var0v)
    # Velocity score of the (objective's) kernel at u_t, by autodiff of its log-density.
    mean_k, (a, b, c) = cld.marginal(u0[:4], t[:4], 0.0, var0v)
    def logk(u):
      dx, dv = (u - mean_k)[:, :1], (u - mean_k)[:, 1:]
      return jnp.sum(-0.5 * (c * dx**2 - 2 * b * dx * dv + a * dv**2) / (a * c - b * b))
    score_v = jax.grad(logk)(u_t[:4])[:, 1:]
    return u_t, mean, cov, score_v, nm[:4] * eps[:4, 1:]

  for t_val in (1e-3, 0.1, 0.7):
    u_t, mean, (sxx, sxv, svv), score_v, score_ref = run(t_val)
    cov = np.array([[sxx[0, 0], sxv[0, 0]], [sxv[0, 0], svv[0, 0]]], np.float64)
    d = np.asarray(u_t, np.float64) - np.asarray(mean, np.float64)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(d.mean(0)) < 5 * sd / math.sqrt(n))
    emp = d.T @ d / n
    corr_err = (emp - cov) / np.outer(sd, sd)
    assert np.all(np.abs(corr_err) < 5 * math.sqrt(2.0 / n)), (t_val, emp, cov)
    # The kernel's velocity score at u_t is noise_multiplier * eps_v (CLD paper, Sec. 3).
    np.testing.assert_allclose(score_v, score_ref, rtol=2e-3, atol=1e-3)


def test_forward_euler_matches_gaussian_marginal():
  """Euler-Maruyama of the CLD SDE from x0 ~ N(MU, S^2), v0 ~ N(0, gamma M)."""
  cld = CLD()
  n, d, steps = 4000, 2, 400
  dt = 0.5 / steps

  @jax.jit
  def simulate(key):
    k0, k1, k2 = jax.random.split(key, 3)
    x0 = MU + S * jax.random.normal(k0, (n, d))
    u = CLD.join(x0, cld.init_velocity(k1, x0))

    def step(u, i):
      drift, g = cld.sde(u, jnp.full((n,), i * dt))
      z = jax.random.normal(jax.random.fold_in(k2, i), u.shape)
      return u + drift * dt + g * math.sqrt(dt) * z, None

    u, _ = jax.lax.scan(step, u, jnp.arange(steps))
    x, v = CLD.split(u)
    moments = cld_marginal_moments(cld, jnp.full((1,), 0.5), x[:1], MU, S)
    cxv = jnp.mean((x - jnp.mean(x)) * (v - jnp.mean(v)))
    return jnp.mean(x), jnp.mean(v), jnp.var(x), jnp.var(v), cxv, moments

  mx, mv, vx, vv, cxv, (mean_x, mean_v, (sxx, sxv, svv), _) = simulate(jax.random.PRNGKey(1))
  sxx, sxv, svv = float(sxx[0, 0]), float(sxv[0, 0]), float(svv[0, 0])
  m = n * d
  assert abs(float(mx - mean_x[0, 0])) < 5 * math.sqrt(sxx / m)
  assert abs(float(mv - mean_v[0, 0])) < 5 * math.sqrt(svv / m)
  assert abs(float(vx) / sxx - 1) < 0.05
  assert abs(float(vv) / svv - 1) < 0.05
  assert abs(float(cxv) - sxv) < 0.05 * math.sqrt(sxx * svv)


def test_gaussian_velocity_score_and_logp():
  cld = CLD()
  u = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 2, 2))  # NHWC, C = 1 (x) + 1 (v)
  t = jnp.array([1e-3, 0.2, 0.9])
  mu = jnp.array([0.1, -0.2]).reshape(2, 1, 1)

  @jax.jit
  def compute(u, t):
    grad = jax.grad(lambda z: jnp.sum(gaussian_marginal_logp(cld, z, t, mu, S)))(u)
    score_v = gaussian_score_fn(cld, mu, S)(u, t)
    lp0 = gaussian_marginal_logp(cld, u, jnp.zeros(3), mu, S)
    x, v = CLD.split(u)
    ref0 = gaussian_logp(x, mu, S) + gaussian_logp(v, 0.0, math.sqrt(cld.hsm_var0v))
    lp1 = gaussian_marginal_logp(cld, u, jnp.ones(3), mu, S)
    return grad, score_v, lp0, ref0, lp1, cld.prior_logp(u)

  grad, score_v, lp0, ref0, lp1, prior = compute(u, t)
  assert score_v.shape == (3, 2, 2, 1)
  np.testing.assert_allclose(score_v, grad[..., 1:], rtol=1e-4, atol=1e-4)
  # At t = 0 the marginal is p_data(x) N(v; 0, gamma M).
  np.testing.assert_allclose(lp0, ref0, rtol=1e-5)
  # At t = 1 the marginal is close to the prior N(0, I) x N(0, M I).
  np.testing.assert_allclose(lp1, prior, rtol=2e-3)


def test_prior():
  cld = CLD()
  u = cld.prior_sample(jax.random.PRNGKey(3), (20000, 4))
  x, v = CLD.split(u)
  assert u.shape == (20000, 4)
  assert abs(float(jnp.std(x)) - 1) < 0.02 and abs(float(jnp.std(v)) - 0.5) < 0.01
  logx, logv = cld.prior_logp_xv(u[:5])
  np.testing.assert_allclose(logx, gaussian_logp(x[:5], 0.0, 1.0), rtol=1e-5)
  np.testing.assert_allclose(logv, gaussian_logp(v[:5], 0.0, 0.5), rtol=1e-5)
  np.testing.assert_allclose(cld.prior_logp(u[:5]), logx + logv, rtol=1e-6)
  with pytest.raises(ValueError):
    cld.prior_sample(jax.random.PRNGKey(0), (2, 3))


def test_reverse_and_probability_flow():
  cld = CLD()
  score_fn = gaussian_score_fn(cld, MU, S)
  u = jax.random.normal(jax.random.PRNGKey(4), (2, 3, 2))
  t = jnp.array([0.3, 0.6])
  basis = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  h = 1e-3

  @jax.jit
  def compute(u, t):
    f, g = cld.sde(u, t)
    revs = [cld.reverse(score_fn, probability_flow=pf).sde(u, t) for pf in (False, True)]
    # PF drift on a basis (it is affine for Gaussian data) and the marginal covariance
    # around two times, for the Fokker-Planck check below.
    pf = cld.reverse(score_fn, probability_flow=True)
    fp = []
    for t_val in (0.05, 0.5):
      drift, _ = pf.sde(basis, jnp.full((3,), t_val))
      covs = [cld_marginal_moments(cld, jnp.full((1,), tv), jnp.zeros((1, 1)), MU, S)[2]
              for tv in (t_val - h, t_val, t_val + h)]
      fp.append((drift, covs))
    return f, g, score_fn(u, t), revs, fp

  f, g, s_v, revs, fp = compute(u, t)
  g_v = CLD.split(g)[1]
  for (drift, diff), pf, w in zip(revs, (False, True), (1.0, 0.5)):
    np.testing.assert_allclose(CLD.split(drift)[0], CLD.split(f)[0], rtol=1e-6)
    np.testing.assert_allclose(CLD.split(drift)[1], CLD.split(f)[1] - w * g_v**2 * s_v,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diff, 0 * g if pf else g)
  np.testing.assert_allclose(g_v, jnp.sqrt(2 * cld.damping * 4.0), rtol=1e-6)
  # PF-ODE / Fokker-Planck consistency for Gaussian data: with the linear PF drift
  # K u + b, the joint covariance must obey dS/dt = K S + S K^T.
  for drift, covs in fp:
    k = np.asarray(drift[1:] - drift[:1], np.float64).T  # columns: K e_x, K e_v
    lo, c0, hi = (np.array([[a[0, 0], b[0, 0]], [b[0, 0], c[0, 0]]], np.float64)
                  for a, b, c in covs)
    np.testing.assert_allclose(k @ c0 + c0 @ k.T, (hi - lo) / (2 * h), rtol=2e-3, atol=2e-3)


def test_sscs_helpers():
  cld = CLD()
  u = jnp.array([[0.7, -0.4], [0.1, 0.9]])
  t = jnp.array([0.8, 0.3])
  dt = 0.05
  # (A) is the forward CLD conjugated by v -> -v; check mean and covariance against the
  # RK4 moment ODE of dx = -m_inv beta v, dv = (beta x - Gamma m_inv beta v) + noise.
  mean, (sxx, sxv, svv), det = cld.ou_step_mean_cov(u, t, dt)
  for i in range(2):
    m0 = np.asarray(u[i], np.float64) * np.array([1.0, -1.0])
    # constant beta: the step t -> t - dt has the law of the ODE from 0 to dt
    m_ref, c_ref = _ode_moments(cld, dt, m0, 0.0, 0.0, steps=200)
    np.testing.assert_allclose(mean[i], m_ref * np.array([1.0, -1.0]), rtol=1e-5, atol=1e-6)
    got = np.array([[sxx[i, 0], -sxv[i, 0]], [-sxv[i, 0], svv[i, 0]]])
    np.testing.assert_allclose(got, c_ref, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(det[i, 0], np.linalg.det(c_ref), rtol=1e-4)
  # The analytic part leaves the prior N(0, I) x N(0, M I) invariant.
  phi = np.stack([np.asarray(cld.ou_step_mean_cov(e[None], t[:1], 0.3)[0][0])
                  for e in jnp.eye(2)], 1)
  _, (a, b, c), _ = cld.ou_step_mean_cov(u[:1], t[:1], 0.3)
  q = np.array([[a[0, 0], b[0, 0]], [b[0, 0], c[0, 0]]])
  sinf = np.diag([1.0, cld.mass])
  np.testing.assert_allclose(phi @ sinf @ phi.T + q, sinf, rtol=1e-5, atol=1e-6)
  # Two half steps equal one full step (in law), and samples have the stated moments.
  m_half, cov_half, _ = cld.ou_step_mean_cov(u, t, dt / 2)
  m_full, cov_full, _ = cld.ou_step_mean_cov(u, t, dt)
  m_two, _, _ = cld.ou_step_mean_cov(m_half, t - dt / 2, dt / 2)
  np.testing.assert_allclose(m_two, m_full, rtol=1e-5, atol=1e-6)
  n = 20000
  samples = cld.sample_ou_step(jax.random.PRNGKey(5), jnp.tile(u[:1], (n, 1)),
                               jnp.full((n,), 0.8), dt)
  d = np.asarray(samples, np.float64) - np.asarray(m_full[:1])
  sd = np.sqrt([float(cov_full[0][0, 0]), float(cov_full[2][0, 0])])
  emp = d.T @ d / n
  ref = np.array([[cov_full[0][0, 0], cov_full[1][0, 0]], [cov_full[1][0, 0], cov_full[2][0, 0]]])
  assert np.all(np.abs((emp - ref) / np.outer(sd, sd)) < 5 * math.sqrt(2.0 / n))
  # Score step: v <- v + 2 Gamma beta (s + m_inv v) dt.
  s_v = jnp.array([[0.5], [-1.0]])
  out = cld.sscs_score_step(u, t, dt, s_v)
  np.testing.assert_allclose(out[:, :1], u[:, :1])
  np.testing.assert_allclose(out[:, 1:], u[:, 1:] + 2 * 1.0 * 4.0 * (s_v + 4 * u[:, 1:]) * dt,
                             rtol=1e-6)
  # Forward transition p(u_t | u_s) matches the kernel from 0 when s = 0.
  m_tr, cov_tr = cld.transition_mean_cov(u, jnp.zeros(2), t)
  m_k, cov_k = CLD(numerical_eps=0.0).marginal(u, t)
  np.testing.assert_allclose(m_tr, m_k, rtol=1e-6)
  for a_, b_ in zip(cov_tr, cov_k):
    np.testing.assert_allclose(a_, b_, rtol=1e-6)


def test_mixed_score_and_constructor():
  cld = CLD()
  u = jnp.array([[0.3, 0.6]])
  t = jnp.array([0.4])
  # The reference's Gaussian part: kernel variance with var0x = 0, var0v = gamma M.
  (_, _, svv), _ = cld.marginal_cov(t, 0.0, cld.hsm_var0v)
  np.testing.assert_allclose(cld_mixed_score(cld, u, t, jnp.zeros((1, 1))), -0.6 / svv[:, None],
                             rtol=1e-6)
  nm = cld.noise_multiplier(t, 0.0, cld.hsm_var0v)
  np.testing.assert_allclose(
      cld_mixed_score(cld, u, t, jnp.ones((1, 1)), cld.hsm_var0v) - (-0.6 / svv[:, None]),
      nm[:, None], rtol=1e-5)
  assert CLD(beta=8.0) == CLD(8.0, 0.0)
  assert CLD(beta=8.0).beta(jnp.array(0.7)) == 8.0
  assert CLD().damping == 1.0 and CLD().mass == 0.25
  assert hash(CLD()) == hash(CLD(4.0, 0.0, 4.0, 0.04, 1e-9))
  with pytest.raises(ValueError):
    CLD(m_inv=-1.0)
