"""Closed-form and Monte-Carlo checks of LSGM's diffusions and objectives.

sde/lsgm_diffusion.py: inverse variance, SDE consistency, unbiased importance sampling.
objectives/lsgm.py: mixed score, cross entropy (LSGM Theorem 1), p / q terms.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.objectives import lsgm as lsgm_obj
from lsgm_jax.sde.lsgm_diffusion import (IW_MODES, IW_UNIFORM_PAIRS, GeometricVPSDE,
                                         VESDEWithInitVar, VPSDEWithInitVar, target_weighting)

Array = jax.Array

DIFFUSIONS = {
    "geometric": GeometricVPSDE(1e-4, 0.99, 0.0),  # the reference's defaults
    "geometric_s0": GeometricVPSDE(3e-5, 0.999, 3e-5),  # sigma2_0 = sigma2_min: geometric
    "vp_s0": VPSDEWithInitVar(0.1, 20.0, 1e-3),
    "ve": VESDEWithInitVar(1e-4, 2500.0, 1e-4),
}
ALL = list(DIFFUSIONS)


def _key(seed: int) -> Array:
  """A PRNG key of the "rbg" implementation.

  The code under test takes any key; RngBitGenerator keys compile several times faster
  than threefry on CPU, which keeps this file inside its time budget.
  """
  return jax.random.key(seed, impl="rbg")


def _dsm_error_gaussian(d, t, second_moment):
  """Exact E(eps - eps_normal(z_t))^2 per dimension for z_0 with E z_0^2 = second_moment.

  eps_normal = sqrt(var) z_t / nv, z_t = m z_0 + sqrt(var) eps, so
  eps - eps_normal = eps (1 - var / nv) - sqrt(var) m z_0 / nv.
  """
  var, m, nv = d.var(t), d.e2int_f(t), d.normal_var(t)
  return jnp.square(1.0 - var / nv) + var * jnp.square(m) * second_moment / jnp.square(nv)


@pytest.mark.parametrize("name", ALL + ["vp_const_beta", "ve_s0_zero"])
def test_inv_var_inverts_var(name):
  d = {"vp_const_beta": VPSDEWithInitVar(1.0, 1.0, 0.0),
       "ve_s0_zero": VESDEWithInitVar(1e-3, 100.0, 0.0)}.get(name) or DIFFUSIONS[name]
  t = jnp.linspace(0.0, 1.0, 1001)
  np.testing.assert_allclose(d.inv_var(d.var(t)), t, rtol=0, atol=5e-5)
  # Relative accuracy down to small t (float32 limits it where var(t) ~ sigma2_0).
  t = jnp.asarray(np.geomspace(1e-4, 1.0, 501), jnp.float32)
  np.testing.assert_allclose(d.inv_var(d.var(t)), t, rtol=2e-4)


@pytest.mark.parametrize("name", ALL)
def test_sde_consistency(name):
  """var(0) = sigma2_0, var' = 2 f var + g^2, m' = f m, and base.SDE methods agree."""
  d = DIFFUSIONS[name]
  t = jnp.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(d.var(jnp.zeros(1)), [d.sigma2_0], rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(d.e2int_f(jnp.zeros(1)), [1.0], rtol=1e-6)
  var, dvar = jax.jvp(d.var, (t,), (jnp.ones_like(t),))
  m, dm = jax.jvp(d.e2int_f, (t,), (jnp.ones_like(t),))
  # (the sum cancels for VP near t = 1: tolerance relative to g^2)
  np.testing.assert_allclose(dvar, 2.0 * d.f(t) * var + d.g2(t), rtol=2e-4,
                             atol=1e-6 * float(jnp.max(d.g2(t))))
  np.testing.assert_allclose(dm, d.f(t) * m, rtol=2e-4, atol=1e-7)
  np.testing.assert_allclose(d.normal_var(t), jnp.square(m) * (1 - d.sigma2_0) + var, rtol=1e-5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((19, 3, 2)), jnp.float32)
  mean, std = d.marginal(x, t)
  np.testing.assert_allclose(mean, m[:, None, None] * x, rtol=1e-6)
  np.testing.assert_allclose(std[:, 0, 0], jnp.sqrt(var), rtol=1e-6)
  drift, g = d.sde(x, t)
  np.testing.assert_allclose(drift, d.f(t)[:, None, None] * x, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g[:, 0, 0] ** 2, d.g2(t), rtol=1e-5)
  z = d.prior_sample(_key(1), (4096, 8))
  assert abs(float(jnp.var(z)) / d.prior_var - 1.0) < 0.05
  logp = d.prior_logp(z[:2])
  expect = -0.5 * jnp.sum(z[:2] ** 2, -1) / d.prior_var - 4 * math.log(2 * math.pi * d.prior_var)
  np.testing.assert_allclose(logp, expect, rtol=1e-5)
  # Frozen and hashable: usable as a jit static argument.
  same = type(d)(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)})
  assert same == d and hash(same) == hash(d)


def _grid(lo: float, hi: float = 1.0, n: int = 40001) -> Array:
  """Log-spaced quadrature nodes on [lo, hi] (the integrands peak near lo).

  Passed to jitted functions as an argument: as a baked-in constant, XLA would
  constant-fold the whole integrand at compile time (slow).
  """
  return jnp.asarray(np.geomspace(lo, hi, n), jnp.float32)


def _quadrature(fn, grid: Array) -> Array:
  """Trapezoid rule for the integral of ``fn`` over the nodes ``grid``."""
  y = fn(grid)
  return jnp.sum(0.5 * (y[1:] + y[:-1]) * jnp.diff(grid))


def _is_statistics(d, modes, time_eps, rho, grid):
  """Per mode (one row of uniforms ``rho`` each): [mean, se] of weight_p h and of
  weight_ll h, and the quadratures of the mode's and the likelihood's target integrals.
  Shape [modes, 6]."""
  h = lambda t: _dsm_error_gaussian(d, t, 0.65)
  ll_exact = _quadrature(lambda t: d.objective_weight(t, "ll") * h(t), grid)
  rows, num = [], rho.shape[1]
  for mode, rho_mode in zip(modes, rho):
    q = d.iw_quantities_from_uniform(rho_mode, time_eps, mode)
    row = []
    for w in (q.weight_p, q.weight_ll):
      v = w * h(q.t)
      row += [jnp.mean(v), jnp.std(v) / math.sqrt(num)]
    exact = _quadrature(lambda t: d.objective_weight(t, target_weighting(mode)) * h(t), grid)
    rows.append(jnp.stack(row + [exact, ll_exact]))
  return jnp.stack(rows)


@pytest.mark.parametrize("name", ALL)
def test_importance_sampling_is_unbiased(name):
  """Every mode's weights are unbiased for its target integral over [eps, 1].

  The integrand h(t) is the exact per-t denoising error of a Gaussian latent
  (E z_0^2 = 0.65) under the Normal score. Checked: each mode against quadrature of its
  target weighting, each IS mode against its uniform twin (ll_iw/ll_uniform,
  drop_all_iw/drop_all_uniform, drop_sigma2t_iw/drop_sigma2t_uniform), and every mode's
  weight_ll against the likelihood (ll_uniform) integral.
  """
  d, eps, num = DIFFUSIONS[name], 1e-2, 1 << 17
  modes = tuple(m for m in IW_MODES if not (name == "ve" and m == "rescale_iw"))
  if name == "ve":
    with pytest.raises(ValueError, match="rescal"):
      d.iw_quantities_from_uniform(jnp.full((8,), 0.5), eps, "rescale_iw")
  rho = np.random.default_rng(0).uniform(size=(len(modes), num)).astype(np.float32)
  table = np.asarray(_is_statistics(d, modes, eps, rho, _grid(eps)), np.float64)
  stats = {}
  for mode, (mean_p, se_p, mean_ll, se_ll, exact, ll_exact) in zip(modes, table):
    stats[mode] = (mean_p, se_p)
    assert abs(mean_p - exact) < 5 * se_p + 2e-4 * abs(exact), (mode, mean_p, exact, se_p)
    assert abs(mean_ll - ll_exact) < 5 * se_ll + 2e-4 * ll_exact, (mode, mean_ll, ll_exact)
  for iw, uniform in IW_UNIFORM_PAIRS.items():
    (a, se_a), (b, se_b) = stats[iw], stats[uniform]
    assert abs(a - b) < 5 * math.hypot(se_a, se_b), (iw, a, uniform, b)
    # The point of importance sampling: a smaller standard error than uniform draws.
    assert se_a < se_b or name == "geometric_s0", (iw, se_a, se_b)


def test_ll_iw_is_uniform_for_geometric_with_sigma2_0_min():
  """With sigma2_0 = sigma2_min, log var(t) is linear in t: ll_iw draws t uniformly and
  weight g^2 / (2 var) (1 - eps) = constant (LSGM's motivation for the geometric SDE)."""
  d = DIFFUSIONS["geometric_s0"]
  rho = jnp.asarray(np.random.default_rng(0).uniform(size=1 << 17), jnp.float32)
  q = d.iw_quantities_from_uniform(rho, 1e-2, "ll_iw")
  u = d.iw_quantities_from_uniform(rho, 1e-2, "ll_uniform")
  np.testing.assert_allclose(q.t, u.t, atol=2e-5)
  np.testing.assert_allclose(q.weight_p * (1 - q.var_t), 0.5 * 0.99 * math.log(0.999 / 3e-5),
                             rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_mixed_score_with_vanishing_logit_is_the_normal_score(name):
  d = DIFFUSIONS[name]
  gen = np.random.default_rng(0)
  z_t = jnp.asarray(3.0 * gen.standard_normal((5, 4, 4, 3)), jnp.float32)
  t = jnp.asarray(gen.uniform(1e-3, 1.0, size=5), jnp.float32)
  eps_net = jnp.asarray(1e3 * gen.standard_normal(z_t.shape), jnp.float32)
  net = lambda z, s: eps_net
  normal = d.mixing_component(z_t, t)
  mixed = lsgm_obj.make_mixed_noise_pred_fn(d, net, jnp.full((3,), -1e4))(z_t, t)
  assert jnp.array_equal(mixed, normal)  # exactly: sigmoid(-1e4) underflows to 0
  assert jnp.array_equal(
      lsgm_obj.make_mixed_noise_pred_fn(d, net, jnp.full((3,), 1e4))(z_t, t), eps_net)
  # Per-channel mixing on the last axis.
  logit = jnp.array([-1e4, 0.0, 1e4])
  mixed = lsgm_obj.mixed_prediction(eps_net, normal, logit)
  np.testing.assert_array_equal(mixed[..., 0], normal[..., 0])
  np.testing.assert_allclose(mixed[..., 1], 0.5 * (normal[..., 1] + eps_net[..., 1]), rtol=1e-6)
  np.testing.assert_array_equal(mixed[..., 2], eps_net[..., 2])

  # The score is exactly that of the diffused Normal N(0, m^2 (1 - sigma2_0) + var), the
  # diffusion of z_0 ~ N(0, 1 - sigma2_0) (N(0, I) once the sigma2_0 noise is added).
  score = lsgm_obj.make_mixed_score_fn(d, net, jnp.full((3,), -1e4))(z_t, t)
  var_n = jnp.square(d.e2int_f(t)) * (1.0 - d.sigma2_0) + d.var(t)
  log_normal = lambda z: jnp.sum(-0.5 * z**2 / var_n[:, None, None, None])
  np.testing.assert_allclose(score, jax.grad(log_normal)(z_t), rtol=1e-5, atol=1e-6)
  if name != "ve":  # VP types: the paper's sigma_t z_t
    np.testing.assert_array_equal(normal, jnp.sqrt(d.var(t))[:, None, None, None] * z_t)

  # Monte Carlo: it is E[eps | z_t] for that Normal (orthogonal residual), at fixed t.
  n = 1 << 16
  z0, noise = jnp.asarray(gen.standard_normal((2, n, 1)), jnp.float32)
  z0 = math.sqrt(1.0 - d.sigma2_0) * z0
  tt = jnp.full((n,), 0.3)
  mean, std = d.marginal(z0, tt)
  zt = mean + std * noise
  resid = noise - d.mixing_component(zt, tt)
  assert abs(float(jnp.mean(resid * zt))) < 5 * float(jnp.std(resid * zt)) / math.sqrt(n)
  assert abs(float(jnp.var(zt)) / float(d.normal_var(tt[0])) - 1.0) < 0.03


@pytest.mark.parametrize("name,time_eps", [("geometric", 1e-2), ("geometric_s0", 1e-4),
                                           ("vp_s0", 1e-3), ("ve", 1e-3)])
def test_cross_entropy_matches_gaussian_closed_form(name, time_eps):
  """LSGM Theorem 1 with the exact prior score: MC estimate = CE of two Gaussians.

  q(z_0) = N(mu, s^2) per dimension; the prior is the diffused Normal whose score the
  mixed model reproduces with a vanishing logit. The estimator targets the cross entropy
  of the eps-perturbed q and p, N(m mu, m^2 s^2 + var) vs N(0, normal_var) at t = eps;
  as eps and sigma2_0 -> 0 this is 1/2 log(2 pi) + 1/2 (mu^2 + s^2) per dimension.
  """
  d = DIFFUSIONS[name]
  mu = jnp.array([0.5, -1.0, 0.0, 2.0])
  s = jnp.array([0.3, 1.0, 0.7, 0.1])
  n = 1 << 15
  k_ce, k_1 = jax.random.split(_key(3))
  z0 = mu + s * jnp.asarray(np.random.default_rng(3).standard_normal((n, 4)), jnp.float32)
  net = lambda z, t: jnp.zeros_like(z)
  ce_fn = functools.partial(lsgm_obj.cross_entropy, iw_sample_q="ll_iw", time_eps=time_eps,
                            include_terminal=(name != "ve"))
  ce = jax.jit(ce_fn, static_argnums=(1, 2))(k_ce, d, net, jnp.full((4,), -1e4), z0)
  total = ce.per_example
  if name == "ve":
    np.testing.assert_allclose(jnp.sum(ce.per_variable, -1), ce.per_example, rtol=1e-5)
    # p_1 is the diffused Normal N(0, normal_var(1)), not the VE sampling prior N(0, var(1)).
    nv1 = float(d.normal_var(jnp.ones(())))
    prior = lambda z: jnp.sum(-0.5 * z**2 / nv1 - 0.5 * jnp.log(2 * math.pi * nv1), -1)
    total = total + lsgm_obj.terminal_cross_entropy(k_1, d, z0, prior_logp=prior)
  estimate, se = float(jnp.mean(total)), float(jnp.std(total)) / math.sqrt(n)

  e = jnp.asarray(time_eps, jnp.float32)
  m2, var_e, nv = float(d.e2int_f(e)) ** 2, float(d.var(e)), float(d.normal_var(e))
  exact = float(jnp.sum(0.5 * jnp.log(2 * math.pi * nv)
                        + 0.5 * (m2 * (mu**2 + s**2) + var_e) / nv))
  assert abs(estimate - exact) < 5 * se, (estimate, exact, se)
  if name == "geometric_s0":  # small eps and sigma2_0: the textbook formula
    textbook = float(jnp.sum(0.5 * math.log(2 * math.pi) + 0.5 * (mu**2 + s**2)))
    assert abs(exact - textbook) < 2e-3 and abs(estimate - textbook) < 5 * se + 2e-3


def test_p_objective_is_unbiased_across_modes():
  """At the objective level (random latents and noise, the network's loss itself), each
  IS mode matches the quadrature of the Gaussian latent's denoising error under the
  mode's weighting (so it also matches its uniform twin, checked above)."""
  d, eps, n = DIFFUSIONS["vp_s0"], 1e-2, 1 << 15
  mu, s = 0.7, 0.4
  net = lambda z, t: jnp.zeros_like(z)
  h = lambda t: _dsm_error_gaussian(d, t, mu**2 + s**2)
  # ll_iw at this level is covered by the cross-entropy test; the uniform twins are
  # plain uniform draws.
  modes = ("drop_all_iw", "drop_sigma2t_iw")
  z0 = mu + s * jnp.asarray(np.random.default_rng(0).standard_normal((n, 2)), jnp.float32)

  @jax.jit
  def run(rng, z0, grid):
    keys = jax.random.split(rng, len(modes))
    out = []
    for mode, key in zip(modes, keys):
      v = lsgm_obj.p_objective(key, d, net, jnp.full((2,), -1e4), z0, iw_sample_p=mode,
                               time_eps=eps)
      weight = functools.partial(d.objective_weight, weighting=target_weighting(mode))
      exact = 2 * _quadrature(lambda t: weight(t) * h(t), grid)
      out.append(jnp.stack([jnp.mean(v), jnp.std(v) / math.sqrt(n), exact]))
    return jnp.stack(out)

  for mode, (mean, se, exact) in zip(modes, np.asarray(run(_key(0), z0, _grid(eps)))):
    assert abs(mean - exact) < 5 * se, (mode, mean, exact, se)


def test_lsgm_terms_share_the_network_call():
  d = DIFFUSIONS["geometric"]
  gen = np.random.default_rng(0)
  z0 = jnp.asarray(gen.standard_normal((6, 4, 4, 3)), jnp.float32)
  w = jnp.asarray(0.1 * gen.standard_normal((3, 3)), jnp.float32)
  logit = jnp.full((3,), -3.0)
  calls = []

  def terms(rng, logit, w, iw_sample_p, iw_sample_q):
    def net(z, t):
      calls.append(z.shape[0])
      return jnp.tanh(z @ w) * t[:, None, None, None]

    return lsgm_obj.lsgm_terms(rng, d, net, logit, z0, iw_sample_p=iw_sample_p,
                               iw_sample_q=iw_sample_q, time_eps=1e-2)

  def loss(logit, w):
    out = terms(_key(2), logit, w, "drop_all_iw", "ll_uniform")
    return jnp.mean(out.p_objective) + jnp.mean(out.cross_entropy), out

  @jax.jit
  def run(logit, w):
    shared = terms(_key(1), logit, w, "ll_iw", "reweight_p_samples")
    return shared, jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(logit, w)

  shared, ((_, separate), grads) = run(logit, w)
  # Reusing the p draws: one network call on B inputs; with ll weights for p and q the
  # cross entropy is the p loss plus the constant.
  # q with its own draws: one call on the concatenated 2B inputs.
  assert calls == [6, 12]
  const = 48 * float(d.cross_entropy_const(1e-2))
  np.testing.assert_allclose(shared.cross_entropy, shared.p_objective + const, rtol=1e-5,
                             atol=1e-5 * abs(const))
  assert separate.p_objective.shape == (6,) and separate.cross_entropy_per_var.shape == z0.shape
  np.testing.assert_allclose(jnp.sum(separate.cross_entropy_per_var, (1, 2, 3)),
                             separate.cross_entropy, rtol=1e-5)
  # Gradients reach the mixing logit and the network's weights.
  assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_probability_flow_matches_reference_form(name):
  """base.ReverseSDE with the mixed score gives the reference ODE f z + 1/2 g^2 eps / sigma."""
  d = DIFFUSIONS[name]
  z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
  t = jnp.array([0.01, 0.2, 0.6, 1.0])
  net = lambda x, s: jnp.sin(x) * s[:, None]
  logit = jnp.linspace(-2.0, 2.0, 5)
  eps = lsgm_obj.make_mixed_noise_pred_fn(d, net, logit)(z, t)
  drift, diffusion = d.reverse(lsgm_obj.make_mixed_score_fn(d, net, logit),
                               probability_flow=True).sde(z, t)
  expect = d.f(t)[:, None] * z + 0.5 * (d.g2(t) / jnp.sqrt(d.var(t)))[:, None] * eps
  # f z and 1/2 g^2 eps / sigma nearly cancel where g^2 is large: atol relative to them.
  scale = float(jnp.max(jnp.abs(d.f(t)[:, None] * z)))
  np.testing.assert_allclose(drift, expect, rtol=1e-5, atol=1e-6 * max(scale, 1.0))
  assert float(jnp.abs(diffusion).max()) == 0.0


def test_invalid_arguments_fail_clearly():
  with pytest.raises(ValueError, match="sigma2_max"):
    GeometricVPSDE(1e-4, 0.99, 0.5)  # var(1) >= 1
  with pytest.raises(ValueError, match="beta_min"):
    VPSDEWithInitVar(0.0, 20.0)
  rho = jnp.full((4,), 0.5)
  with pytest.raises(ValueError, match="mode"):
    DIFFUSIONS["vp_s0"].iw_quantities_from_uniform(rho, 1e-2, "ll")
  with pytest.raises(ValueError, match="var\\(eps\\)"):
    GeometricVPSDE().iw_quantities_from_uniform(rho, 0.0, "ll_iw")
