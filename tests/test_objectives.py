"""The score-matching losses against closed-form expectations for Gaussian data.

For x0 ~ N(MU, S^2) the marginal is Gaussian, its exact score is linear in the noise, and
the expected loss of the exact score is a quadratic form computable in closed form.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.objectives.dsm import dsm_loss
from lsgm_jax.objectives.hsm import cld_dsm_loss, cld_loss, hsm_loss
from lsgm_jax.sde import CLD, SubVPSDE, VESDE, VPSDE
from lsgm_jax.sde.gaussian import cld_marginal_moments, gaussian_score_fn

MU, S = 0.4, 0.6
N_PER_T, D = 3000, 2
T_VALUES = (0.02, 0.3, 0.9)


def _data(n, d, seed=0):
  return MU + S * jax.random.normal(jax.random.PRNGKey(seed), (n, d))


def _fixed_t():
  return jnp.repeat(jnp.array(T_VALUES), N_PER_T)


def _check_mc(losses, expected):
  """Per-t chunk: the Monte Carlo mean is within 5 standard errors of the expectation."""
  losses = np.asarray(losses, np.float64).reshape(len(T_VALUES), N_PER_T)
  for row, exp in zip(losses, expected):
    se = row.std() / math.sqrt(N_PER_T)
    assert abs(row.mean() - exp) < 5 * se + 1e-6 * abs(exp), (row.mean(), exp, se)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_dsm_exact_score_expectation(sde):
  """E || std s*(x_t) + z ||^2 = c^2 S^2 / (c^2 S^2 + std^2) per dimension (derivation:
  std s* + z = z (1 - std^2 / v) - std c e0 / v with v = c^2 S^2 + std^2)."""
  t = _fixed_t()
  x0 = _data(t.shape[0], D)
  score_fn = gaussian_score_fn(sde, MU, S)
  c, std = sde.marginal(jnp.ones((3, 1)), jnp.array(T_VALUES))
  c, std = np.asarray(c[:, 0], np.float64), np.asarray(std[:, 0], np.float64)
  per_dim = c**2 * S**2 / (c**2 * S**2 + std**2)

  @jax.jit
  def losses(rng, x0, t):
    return dict(
        none=dsm_loss(rng, sde, score_fn, x0, weighting="none", t=t),
        simple=dsm_loss(rng, sde, score_fn, x0, weighting="simple", t=t),
        mean=dsm_loss(rng, sde, score_fn, x0, reduce="mean", t=t),
        likelihood=dsm_loss(rng, sde, score_fn, x0, weighting="likelihood", t=t),
        zero=dsm_loss(rng, sde, lambda x, t: jnp.zeros_like(x), x0, t=t))

  out = losses(jax.random.PRNGKey(1), x0, t)
  assert out["none"].shape == (t.shape[0],)
  _check_mc(out["none"], D * per_dim)
  # "simple" (noise prediction with eps_pred = -std * score) is the same number.
  np.testing.assert_allclose(out["simple"], out["none"], rtol=1e-6)
  np.testing.assert_allclose(out["mean"], out["none"] / D, rtol=1e-6)
  # Likelihood weighting: lambda = g^2, i.e. g^2 / std^2 times the above.
  _, g = sde.sde(jnp.ones((3, 1)), jnp.array(T_VALUES))
  g2 = np.asarray(g[:, 0], np.float64)**2
  _check_mc(out["likelihood"], D * per_dim * g2 / std**2)
  # A zero score leaves ||z||^2, whose mean is D.
  _check_mc(out["zero"], [D] * 3)


def test_dsm_random_time_expectation():
  """t ~ U(eps, 1): the MC mean matches the Gauss-Legendre integral of the expectation."""
  sde = VPSDE()
  eps = 1e-3
  n = 9000
  x0 = _data(n, D, seed=2)
  loss_fn = jax.jit(lambda r, x: dsm_loss(r, sde, gaussian_score_fn(sde, MU, S), x,
                                          loss_eps=eps))
  losses = np.asarray(loss_fn(jax.random.PRNGKey(3), x0), np.float64)
  nodes, weights = np.polynomial.legendre.leggauss(64)
  tq = eps + (1 - eps) * (nodes + 1) / 2
  c, std = sde.marginal(jnp.ones((64, 1)), jnp.asarray(tq, jnp.float32))
  c, std = np.asarray(c[:, 0], np.float64), np.asarray(std[:, 0], np.float64)
  expected = D * np.sum(weights / 2 * c**2 * S**2 / (c**2 * S**2 + std**2))
  assert abs(losses.mean() - expected) < 5 * losses.std() / math.sqrt(n)
  with pytest.raises(ValueError):
    dsm_loss(jax.random.PRNGKey(0), sde, gaussian_score_fn(sde, MU, S), x0, weighting="bad")


@functools.partial(jax.jit, static_argnums=0)
def _cld_gaussian_stats(cld, t_val, var0v):
  """exp(B A) (rows: images of e_x, e_v), the kernel covariance and det, the marginal cov."""
  t = jnp.full((1,), t_val)
  phi = cld.mean(jnp.eye(2), jnp.full((2,), t_val))
  (kxx, kxv, kvv), kdet = cld.marginal_cov(t, 0.0, var0v)
  _, _, (mxx, mxv, mvv), _ = cld_marginal_moments(cld, t, jnp.zeros((1, 1)), MU, S)
  return phi, (kxx[0], kxv[0], kvv[0]), kdet[0], (mxx[0, 0], mxv[0, 0], mvv[0, 0])


def _cld_expected_sq_residual(cld, t_val, objective):
  """E (s*_v(u_t) + l_t eps_v)^2 per dimension and L_22, in float64.

  u_t - mean = Phi diag(S, s_v0) (e, e') + L (eps_x, eps_v) with standard normals; the
  exact velocity score is -(Sigma_m^{-1} (u_t - mean))_v, so the residual is w . xi.
  """
  if objective == "dsm":
    s_v0, var0v = math.sqrt(cld.hsm_var0v), 0.0
  else:
    s_v0, var0v = 0.0, cld.hsm_var0v
  phi, (kxx, kxv, kvv), kdet, (mxx, mxv, mvv) = jax.tree_util.tree_map(
      lambda a: np.asarray(a, np.float64), _cld_gaussian_stats(cld, t_val, var0v))
  phi = phi.T
  l11, l21, l22 = math.sqrt(kxx), kxv / math.sqrt(kxx), math.sqrt(kdet / kxx)
  sig_m = np.array([[mxx, mxv], [mxv, mvv]], np.float64)
  c = np.concatenate([phi @ np.diag([S, s_v0]), np.array([[l11, 0.0], [l21, l22]])], 1)
  w = -(np.linalg.inv(sig_m) @ c)[1]
  w[3] += 1.0 / l22
  return float(w @ w), l22


@pytest.mark.parametrize("objective", ["hsm", "dsm"])
def test_cld_losses_exact_score_expectation(objective):
  """CLD paper, Sec. 3 / reference losses.py weightings, with the exact velocity score."""
  cld = CLD()
  t = _fixed_t()
  x0 = _data(t.shape[0], D, seed=4)
  score_fn = gaussian_score_fn(cld, MU, S)
  loss = {"hsm": hsm_loss, "dsm": cld_dsm_loss}[objective]
  stats = [_cld_expected_sq_residual(cld, tv, objective) for tv in T_VALUES]
  gb = np.array([cld.damping * cld.beta0] * 3)  # Gamma beta = g^2 / 2
  sq = np.array([s[0] for s in stats])
  l22 = np.array([s[1] for s in stats])
  rng = jax.random.PRNGKey(5)

  @jax.jit
  def losses(rng, x0, t):
    out = {w: loss(rng, cld, score_fn, x0, weighting=w, t=t)
           for w in ("likelihood", "reweightedv1", "reweightedv2")}
    out["mean"] = loss(rng, cld, score_fn, x0, reduce="mean", t=t)
    return out

  out = losses(rng, x0, t)
  lik, v1, v2 = out["likelihood"], out["reweightedv1"], out["reweightedv2"]
  assert lik.shape == (t.shape[0],)
  _check_mc(lik, D * gb * sq)
  _check_mc(v1, D * gb * sq * l22**2)
  _check_mc(v2, D * sq * l22**2)
  np.testing.assert_allclose(v1, v2 * cld.damping * cld.beta0, rtol=1e-5)
  np.testing.assert_allclose(out["mean"], v2 / D, rtol=1e-6)
  # The velocity score network sees u = (x, v) with x on the first half of the channels.
  seen = []
  def spy(u, tt):
    seen.append(u.shape)
    return jnp.zeros(u.shape[:-1] + (u.shape[-1] // 2,))
  img = jnp.zeros((2, 4, 4, 3))
  out = cld_loss(rng, cld, spy, img, objective=objective)
  assert seen[-1] == (2, 4, 4, 6) and out.shape == (2,)
  # A zero score leaves sum_d eps_v^2 under reweightedv2: mean 3 for 3 dimensions.
  zero = jax.jit(lambda r, x: cld_loss(r, cld, spy, x, objective=objective))(
      rng, jnp.zeros((4000, 3)))
  assert abs(float(jnp.mean(zero)) - 3) < 5 * math.sqrt(2 * 3 / 4000)


def test_hsm_has_lower_variance_target_than_dsm():
  """Marginalising v0 (HSM) lowers the variance of the regression target (CLD paper,
  Sec. 3): with the exact velocity score, the per-example losses of the real
  ``hsm_loss`` and ``cld_dsm_loss`` (likelihood weighting, same x0, t and noise key)
  have a smaller mean (the target's variance around the score) and a smaller
  Monte-Carlo variance under HSM. Closed-form ratios of the means: 1.30 at t = 1e-3 and
  1.12 at t = 1e-2 (``_cld_expected_sq_residual``); the variance ratio is ~ their square."""
  cld, n, t_values = CLD(), 20000, (1e-3, 1e-2)
  t = jnp.repeat(jnp.array(t_values), n)
  x0 = _data(t.shape[0], D, seed=2)
  score_fn = gaussian_score_fn(cld, MU, S)

  @jax.jit
  def both(rng, x0, t):
    return {name: fn(rng, cld, score_fn, x0, weighting="likelihood", t=t)
            for name, fn in (("hsm", hsm_loss), ("dsm", cld_dsm_loss))}
  losses = {k: np.asarray(v, np.float64).reshape(len(t_values), n)
            for k, v in both(jax.random.PRNGKey(5), x0, t).items()}
  gb = cld.damping * cld.beta0
  for i, tv in enumerate(t_values):
    h, d = losses["hsm"][i], losses["dsm"][i]
    for row, objective in ((h, "hsm"), (d, "dsm")):  # each loss is the real one
      expected = D * gb * _cld_expected_sq_residual(cld, tv, objective)[0]
      assert abs(row.mean() - expected) < 5 * row.std() / math.sqrt(n), (objective, tv)
    diff = d - h  # paired: same x0, t and kernel noise
    assert diff.mean() > 10 * diff.std() / math.sqrt(n), tv
    var_h, var_d = h.var(), d.var()
    se = math.hypot(*(math.sqrt(np.mean((r - r.mean()) ** 4) - r.var() ** 2) for r in (h, d)))
    assert var_d - var_h > 5 * se / math.sqrt(n) and var_d > 1.1 * var_h, (tv, var_h, var_d)