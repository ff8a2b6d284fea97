"""Convergence orders of the fast samplers (issue 13) with the exact score of Gaussian data.

Problem: x0 ~ N(mu, s^2) per dimension (the harness of test_samplers.py: mu = (0.5, -1),
s = (0.3, 0.8)), the exact score of every marginal (``sde.gaussian``), and the exact p_T
as the starting law (``exact_prior_sde``), so every sampler's continuous-time limit is
exactly p_eps (Heun: the denoised p_{sigma_min}, see ``_heun_target``) and its error is the
discretisation error alone. Float64 throughout.

Deterministic samplers are affine maps per dimension on Gaussian data, so their output law
is computed exactly from two starting points (``points=True``): no Monte Carlo at all.
Euler-Maruyama is stochastic; its error is estimated from 100k samples per dimension (the
standard error of a std estimate is s / sqrt(2n) < 1.8e-3, a seventh of the error at NFE 80).

Error: W2 between the output law and the target, both diagonal Gaussians:
W2^2 = sum_d (m_d - mu_d)^2 + (sd_d - s_d)^2. Order: minus the slope of log W2 against
log NFE fitted over NFE 10, 20, 40, 80 (Heun: 9, 19, 39, 79 since N steps cost 2N - 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, methods, samplers
from lsgm_jax.config_defaults import get_default_config
from lsgm_jax.samplers import scaled_view as sv
from lsgm_jax.samplers.heun import karras_sigmas
from lsgm_jax.sde import CLD, VESDE, VPSDE, SubVPSDE
from lsgm_jax.sde.gaussian import exact_prior_sde, gaussian_score_fn, marginal_moments
from tests.helpers import load_config

MU = (0.5, -1.0)
S = (0.3, 0.8)
EPS = 1e-3
VP, SUBVP, VE = VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)
SDES = {"vp": VP, "subvp": SUBVP, "ve": VE}
NFES = (10, 20, 40, 80)


def _target(sde, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of the sampler's continuous-time limit."""
  mean, var = marginal_moments(sde, jnp.full((1,), EPS), jnp.zeros((1, 2)), jnp.asarray(MU),
                               jnp.asarray(S))
  mean, std = np.asarray(mean[0]), np.sqrt(np.asarray(var[0]))
  if name == "heun":
    # Limit: the exact flow to sigma_min = sigma(eps), then EDM's last Euler step to
    # sigma = 0, which is Tweedie's denoiser: N(mu, s^4 / (s^2 + sigma_min^2)).
    sig = float(sv.edm_sigma(sde, jnp.asarray([EPS]))[0])
    s = np.asarray(S)
    return np.asarray(MU), s**2 / np.sqrt(s**2 + sig**2)
  return mean, std


def _w2(mean, std, target) -> float:
  return float(np.sqrt(np.sum((mean - target[0])**2 + (std - target[1])**2)))


def _order(nfe, err) -> float:
  return float(-np.polyfit(np.log(nfe), np.log(err), 1)[0])


@functools.lru_cache(maxsize=None)
def _problem(sde_name: str, points: bool):
  """(SDE with the exact p_T as prior, its exact score): one object per case, so that the
  jitted samplers (static sde and score_fn) compile once per case and step count."""
  sde = exact_prior_sde(SDES[sde_name], MU, S, points=points)
  return sde, gaussian_score_fn(sde, jnp.asarray(MU), jnp.asarray(S))


@functools.lru_cache(maxsize=None)
def _deterministic_errors(name: str, sde_name: str, schedule: str | None = None
                          ) -> tuple[tuple[int, ...], tuple[float, ...]]:
  base = SDES[sde_name]
  sde, score = _problem(sde_name, True)
  options = {} if schedule is None else {"schedule": schedule}
  target = _target(base, name)
  nfes, errs = [], []
  for nfe in NFES:
    steps = nfe // 2 if name == "heun" else nfe
    x, info = samplers.get_sampler(name)(jax.random.PRNGKey(0), sde, score, (2, 2),
                                         num_steps=steps, eps=EPS, **options)
    x = np.asarray(x)
    assert x.dtype == np.float64
    nfes.append(int(info["nfe"]))
    errs.append(_w2(x[0], np.abs(x[1] - x[0]), target))
  return tuple(nfes), tuple(errs)


# Measured fitted orders (float64, this harness): DDIM 0.95 / 0.95 / 0.96 (VP / sub-VP /
# VE); Heun 2.33 / 2.25 / 2.21; DPM-Solver++(2M) logSNR 1.76 / 1.51 / 1.87, whose local
# order over the last doubling (NFE 40 -> 80) is 1.98 / 1.95 / 1.99: at NFE 10 (h ~ 1 in
# log-SNR) it is not yet asymptotic, most of all on sub-VP.
ORDER_CASES = [
    ("ddim", "vp", None, (0.85, 1.15)),
    ("ddim", "subvp", None, (0.85, 1.15)),
    ("heun", "vp", None, (1.8, 2.5)),
    ("heun", "subvp", None, (1.8, 2.5)),
    ("heun", "ve", None, (1.8, 2.5)),
    ("dpm_solver_pp", "vp", "logSNR", (1.6, 2.3)),
    ("dpm_solver_pp", "subvp", "logSNR", (1.4, 2.3)),
    ("dpm_solver_pp", "ve", "logSNR", (1.6, 2.3)),
]


@pytest.mark.parametrize("name,sde_name,schedule,bounds", ORDER_CASES,
                         ids=[f"{c[0]}_{c[1]}" for c in ORDER_CASES])
def test_deterministic_convergence_order(name, sde_name, schedule, bounds):
  with jax.enable_x64(True):
    nfes, errs = _deterministic_errors(name, sde_name, schedule)
  order = _order(nfes, errs)
  assert bounds[0] < order < bounds[1], (nfes, errs, order)
  assert errs[-1] < errs[0] / 5
  if name != "ddim":  # second order asymptotically: the last doubling divides by ~4
    assert 3.4 < errs[-2] / errs[-1] < 5.0, errs


@pytest.fixture(scope="module")
def em_errors():
  """Euler-Maruyama's W2 error (Monte Carlo, 100k samples) at NFE 10 ... 100 on VP."""
  with jax.enable_x64(True):
    sde, score = _problem("vp", False)
    target = _target(VP, "euler_maruyama")
    errs = {}
    for nfe in NFES + (100,):
      # One key for every NFE: the same prior draw (common random numbers).
      x, _ = samplers.euler_maruyama(jax.random.PRNGKey(0), sde, score, (100_000, 2),
                                     num_steps=nfe, eps=EPS, denoise=False)
      x = np.asarray(x)
      errs[nfe] = _w2(x.mean(0), x.std(0), target)
  return errs


def test_euler_maruyama_order_one(em_errors):
  """Exact (moment recursion): W2 0.189, 0.049, 0.026, 0.012 at NFE 10 ... 80, fitted order
  1.3 (NFE 10 is pre-asymptotic: h beta(1) = 2, EM is barely stable), local order 0.9 - 1.1
  after. The Monte-Carlo estimate adds up to ~3e-3 (mean error s / sqrt(n) = 2.5e-3)."""
  order = _order(NFES, [em_errors[n] for n in NFES])
  assert 0.8 < order < 1.5, em_errors


def test_dpm_solver_pp_against_euler_maruyama(em_errors):
  """Issue 13's target (DPM-Solver++ at NFE 10 <= EM at NFE 100) does NOT hold here.

  Measured on VP: DPM-Solver++(2M) W2 0.029 / 0.011 / 0.0030 at NFE 10 / 20 / 40, EM
  0.0096 at NFE 100 (exact-moment recursion and Monte Carlo agree). With an exact score on
  Gaussian data the reverse SDE contracts EM's errors, so EM is unusually good; DPM-Solver++
  reaches EM-100's error between NFE 20 and 40, and beats EM at equal NFE by 6x at 10.
  What is asserted is that measured picture.
  """
  with jax.enable_x64(True):
    _, errs = _deterministic_errors("dpm_solver_pp", "vp", "logSNR")
  dpm = dict(zip(NFES, errs))
  assert dpm[10] < em_errors[10] / 5
  assert dpm[40] <= em_errors[100]
  assert dpm[10] > em_errors[100]  # the target's NFE-10 claim fails on this problem


def test_dpm_solver_pp_3m(em_errors):
  """DPM-Solver++(3M) (``order=3``). Measured on VP, logSNR grid: W2 4.9e-2 / 6.4e-3 /
  1.2e-3 / 2.7e-4 at NFE 10 / 20 / 40 / 80 (2M: 2.9e-2 / 1.1e-2 / 3.0e-3 / 7.6e-4). Its
  first two steps are first / second order (as the reference's warm-up), whose local
  errors keep the global order at 2 (last-doubling ratio 4.4); the constant is 2.8x
  smaller than 2M's from NFE 20 on, and it reaches Euler-Maruyama's NFE-100 error at NFE
  20. At NFE 10 (h ~ 1) the quadratic extrapolation overshoots: 2M is better there."""
  with jax.enable_x64(True):
    _, errs2 = _deterministic_errors("dpm_solver_pp", "vp", "logSNR")
    sde, score = _problem("vp", True)
    target = _target(VP, "dpm_solver_pp")
    errs3 = []
    for nfe in NFES:
      x, info = samplers.dpm_solver_pp(jax.random.PRNGKey(0), sde, score, (2, 2),
                                       num_steps=nfe, eps=EPS, order=3)
      assert int(info["nfe"]) == nfe
      x = np.asarray(x)
      errs3.append(_w2(x[0], np.abs(x[1] - x[0]), target))
  assert all(e3 < e2 / 1.5 for e2, e3 in zip(errs2[1:], errs3[1:])), (errs2, errs3)
  assert 4.1 < errs3[-2] / errs3[-1] < 5.0, errs3
  assert errs3[1] < em_errors[100] < errs2[1]


def test_ddim_eta_and_heun_churn_sample_the_gaussian():
  """The stochastic variants (DDIM eta = 1: DDPM's posterior; EDM churn) in float32 with the
  plain N(0, I) prior: 5k samples match N(mu, s^2) to the harness tolerance (0.06 s)."""
  mu, s = np.asarray(MU, np.float32), np.asarray(S, np.float32)
  score = gaussian_score_fn(VP, mu, s)
  # DDPM-like ancestral steps have a large first-order constant: std 9 % low at 100 steps,
  # 2.7 % at 400, 1.4 % at 1000 (measured), so 300 steps here.
  for name, options in (("ddim", dict(num_steps=300, eta=1.0)),
                        ("heun", dict(num_steps=40, s_churn=10.0, s_tmin=0.05, s_tmax=50.0))):
    x, info = samplers.get_sampler(name)(jax.random.PRNGKey(0), VP, score, (5_000, 2),
                                         **options)
    x = np.asarray(x, np.float64)
    assert x.dtype == np.float64 and np.all(np.isfinite(x))
    assert np.all(np.abs(x.mean(0) - mu) / s < 0.06), (name, x.mean(0))
    assert np.all(np.abs(x.std(0) / s - 1.0) < 0.06), (name, x.std(0))
  assert int(info["nfe"]) == 79


# ------------------------------------------------------------------ the EDM / log-SNR view

@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_edm_view_is_the_probability_flow(sde_name):
  """EDM eq. (4): dx/dt = (s'/s) x - s^2 sigma sigma' score equals f - 1/2 g^2 score."""
  sde = SDES[sde_name]
  t = jnp.asarray([0.01, 0.3, 0.9])
  x = jnp.asarray([[0.7], [-1.2], [2.0]])
  score = jnp.asarray([[-0.4], [1.1], [0.3]])
  s_fn = lambda t: sv.alpha_std(sde, t)[0]
  sig_fn = lambda t: sv.edm_sigma(sde, t)
  s, ds = jax.jvp(s_fn, (t,), (jnp.ones_like(t),))
  sig, dsig = jax.jvp(sig_fn, (t,), (jnp.ones_like(t),))
  edm = (ds / s)[:, None] * x - (s**2 * sig * dsig)[:, None] * score
  drift = sde.reverse(lambda x, t: score, probability_flow=True).sde(x, t)[0]
  np.testing.assert_allclose(edm, drift, rtol=2e-4, atol=1e-5)


def test_karras_sigmas_and_time_inversion():
  sig = karras_sigmas(5, 0.002, 80.0, 7.0)
  ramp = np.linspace(0, 1, 5)
  expected = (80.0**(1 / 7) + ramp * (0.002**(1 / 7) - 80.0**(1 / 7)))**7
  np.testing.assert_allclose(sig[:-1], expected, rtol=1e-5)
  assert float(sig[-1]) == 0.0
  np.testing.assert_allclose(karras_sigmas(1, 0.1, 5.0), [5.0, 0.0], rtol=1e-6)
  for sde in (VP, SUBVP, VE):
    t = jnp.asarray([1e-3, 0.2, 0.7, 1.0])
    sig = sv.edm_sigma(sde, t)
    back = sv.invert_increasing(lambda u: sv.edm_sigma(sde, u), sig, sde.T)
    np.testing.assert_allclose(back, t, rtol=1e-4)


# ------------------------------------------------------------------ registry and configs

def test_registry_and_config_options():
  for name in ("ddim", "heun", "dpm_solver_pp"):
    assert samplers.SAMPLERS[name] is getattr(samplers, name)
  sampling = get_default_config().sampling
  expected = {
      "ddim": {"eps", "denoise", "num_steps", "eta"},
      "heun": {"eps", "num_steps", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise"},
      "dpm_solver_pp": {"eps", "denoise", "num_steps", "schedule", "order"},
      "sscs": {"eps", "denoise", "num_steps", "order"},
      "probability_flow_ode": {"eps", "denoise"},
      "euler_maruyama": {"eps", "denoise", "num_steps"},
      "annealed_langevin": {"eps", "denoise", "num_levels"},
  }
  for name, keys in expected.items():
    with sampling.unlocked():
      sampling.method = name
    assert set(samplers.sampler_options(sampling, 1e-3)) == keys, name


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver_pp"])
def test_fast_samplers_refuse_cld(name):
  with pytest.raises(ValueError, match="sscs"):
    samplers.get_sampler(name)(jax.random.PRNGKey(0), CLD(), lambda u, t: u, (2, 2),
                               num_steps=2)


def test_sgm_method_samples_with_a_fast_sampler():
  """``--config.sampling.method`` reaches the new samplers through the SGM method (the
  options of each sampler are covered by ``test_registry_and_config_options``)."""
  config = load_config("sgm_toy", "smoke")
  config.sampling.method = "dpm_solver_pp"
  config.sampling.num_steps = 8
  config.sampling.dpm_schedule = "time_uniform"
  sgm = methods.build_method(config, data.dataset_info(config.data))
  params, model_state = sgm.init_params(jax.random.PRNGKey(0))
  x, info = jax.jit(lambda p, r: sgm.generate(p, model_state, r, 16))(params,
                                                                       jax.random.PRNGKey(1))
  assert x.shape == (16, 2) and np.all(np.isfinite(np.asarray(x)))
  assert int(info["nfe"]) == 9  # 8 steps + the config's denoising step


def test_second_order_sscs_samples_the_gaussian():
  """SSCS with a Heun score step (order=2): 2 NFE per step, and N(mu, s^2) at 50 steps
  (10k samples, harness tolerance). Its convergence order (~2.3 fitted on the quadratic
  grid, Monte Carlo) is measured by ``benchmarks/samplers.py --nfe_table``."""
  cld = CLD()
  mu, s = np.asarray(MU, np.float32), np.asarray(S, np.float32)
  x, info = samplers.sscs(jax.random.PRNGKey(0), cld, gaussian_score_fn(cld, mu, s),
                          (10_000, 2), num_steps=50, striding="quadratic", order=2)
  assert int(info["nfe"]) == 100
  x = np.asarray(x, np.float64)
  assert np.all(np.abs(x.mean(0) - mu) / s < 0.06), x.mean(0)
  assert np.all(np.abs(x.std(0) / s - 1.0) < 0.06), x.std(0)
  with pytest.raises(ValueError, match="order"):
    samplers.sscs(jax.random.PRNGKey(0), cld, gaussian_score_fn(cld, mu, s), (4, 2),
                  num_steps=2, order=3)
