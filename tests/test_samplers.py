"""Closed-form checks of the samplers with the exact score of Gaussian data.

Data: x0 ~ N(mu, s^2) independently per dimension, D = 2, with a different (mu, s) in
each dimension. ``lsgm_jax.sde.gaussian`` gives the exact score of every marginal p_t, so
a correct sampler with enough steps returns N(mu, s^2) up to Monte-Carlo error (the
small difference between p_eps at eps = 1e-3 and p_0 is below 0.1 % of s).

Tolerance: with n = 10_000 samples per dimension the standard errors of the sample mean
and std, relative to s, are 1/sqrt(n) = 0.010 and 1/sqrt(2n) = 0.007. Every case
asserts |mean - mu| / s < 0.06 and |std / s - 1| < 0.06: about 5 standard errors plus a
little discretisation bias (fixed seeds, so the test is deterministic).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import samplers
from lsgm_jax.samplers import time_grid as tg
from lsgm_jax.samplers.annealed_langevin import annealed_langevin
from lsgm_jax.samplers.euler_maruyama import euler_maruyama
from lsgm_jax.samplers.predictor_corrector import predictor_corrector
from lsgm_jax.samplers.probability_flow_ode import probability_flow_ode, solve_ode
from lsgm_jax.samplers.sscs import sscs
from lsgm_jax.sde import CLD, VESDE, VPSDE, SubVPSDE
from lsgm_jax.sde.gaussian import gaussian_score_fn

MU = np.array([0.5, -1.0], np.float32)
S = np.array([0.3, 0.8], np.float32)
N_SAMPLES = 10_000
SHAPE = (N_SAMPLES, 2)
TOL = 0.06

VP, SUBVP, VE, CLD_SDE = VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0), CLD()
SCORES = {sde: gaussian_score_fn(sde, MU, S) for sde in (VP, SUBVP, VE, CLD_SDE)}


def _relative_errors(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64)
  return np.abs(x.mean(0) - MU) / S, np.abs(x.std(0) / S - 1.0)


# ------------------------------------------------------------------- time grid

def test_time_grid_linear_and_quadratic():
  lin = tg.time_grid(10, eps=1e-3, striding="linear")
  quad = tg.time_grid(10, eps=1e-3, striding="quadratic")
  for t in (lin, quad):
    assert t.shape == (11,) and t[0] == 1.0 and abs(t[-1] - 1e-3) < 1e-12
    assert np.all(np.diff(t) < 0)
  np.testing.assert_allclose(np.diff(lin), -(1.0 - 1e-3) / 10, rtol=1e-9)
  # Quadratic: steps shrink linearly towards the data; the last is 1/19 of the first.
  steps = -np.diff(quad)
  assert np.all(np.diff(steps) < 0)
  np.testing.assert_allclose(steps[-1] / steps[0], 1.0 / 19.0, rtol=1e-9)
  t_start, dt = tg.step_table(10, striding="quadratic")
  np.testing.assert_allclose(t_start - dt, quad[1:], rtol=1e-6)
  with pytest.raises(ValueError, match="linear, quadratic"):
    tg.time_grid(10, striding="cubic")


def test_get_sampler_mapping_and_error():
  assert set(samplers.SAMPLERS) == {"euler_maruyama", "predictor_corrector",
                                    "annealed_langevin", "probability_flow_ode", "sscs",
                                    "ddim", "heun", "dpm_solver_pp"}
  assert samplers.get_sampler("sscs") is sscs
  with pytest.raises(ValueError, match="valid: annealed_langevin, ddim, dpm_solver_pp"):
    samplers.get_sampler("dpm_solver_3s")


# ----------------------------------------------- samples match N(mu, s^2) with exact score

CASES = [
    # (id, sampler, sde, options, expected nfe)
    ("em_vp", euler_maruyama, VP, dict(num_steps=1000), 1000),
    ("em_subvp", euler_maruyama, SUBVP, dict(num_steps=1000), 1000),
    ("em_ve", euler_maruyama, VE, dict(num_steps=1000), 1000),
    ("pc_vp", predictor_corrector, VP, dict(num_steps=500, n_corrector=1, snr=0.16), 1000),
    ("pc_ve", predictor_corrector, VE, dict(num_steps=500, n_corrector=1, snr=0.16), 1000),
    ("ald_ve", annealed_langevin, VE,
     dict(num_levels=100, n_steps_each=10, snr=0.3, denoise=True), 1001),
    ("ode_vp", probability_flow_ode, VP, dict(rtol=1e-5, atol=1e-5), None),
    ("sscs_cld", sscs, CLD_SDE, dict(num_steps=200, striding="quadratic"), 200),
    ("em_cld", euler_maruyama, CLD_SDE, dict(num_steps=200, striding="quadratic",
                                             denoise=True), 201),
]


@pytest.mark.parametrize("sampler,sde,options,nfe", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_sampler_matches_gaussian(sampler, sde, options, nfe):
  x, info = sampler(jax.random.PRNGKey(0), sde, SCORES[sde], SHAPE, **options)
  assert x.shape == SHAPE and x.dtype == jnp.float32
  mean_err, std_err = _relative_errors(x)
  assert np.all(mean_err < TOL), mean_err
  assert np.all(std_err < TOL), std_err
  if nfe is not None:
    assert int(info["nfe"]) == nfe
  else:  # adaptive: a few dozen RK steps for a Gaussian.
    assert 10 < int(info["nfe"]) < 1000
  if isinstance(sde, CLD):
    assert info["v"].shape == SHAPE


def test_sscs_beats_euler_maruyama_at_equal_nfe():
  """CLD paper, Sec. 3.3: SSCS is more accurate than EM for the same number of steps.

  At NFE = 20 on the linear grid EM is unstable near t = 0 (the velocity score of CLD
  is stiff there: ~ -v / (gamma M)), while SSCS integrates the linear part exactly. The
  error is |mean - mu| / s + |std / s - 1| summed over the dimensions; measured here:
  SSCS ~0.4, EM ~1.0.
  """
  errors = {}
  for name, sampler in (("sscs", sscs), ("em", euler_maruyama)):
    x, info = sampler(jax.random.PRNGKey(1), CLD_SDE, SCORES[CLD_SDE], SHAPE, num_steps=20,
                      striding="linear")
    assert int(info["nfe"]) == 20
    mean_err, std_err = _relative_errors(x)
    errors[name] = float(np.sum(mean_err + std_err))
  assert errors["sscs"] < 0.6 * errors["em"], errors


# ------------------------------------------------------- one compiled program, NFE counts

class _CompileLog(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def _counting_score(sde):
  exact = gaussian_score_fn(sde, MU, S)
  calls = []

  def score(x, t):
    calls.append(1)  # runs at trace time only
    return exact(x, t)

  return score, calls


@pytest.mark.parametrize("sampler,sde,options", [
    (euler_maruyama, VP, {}),
    (predictor_corrector, VE, dict(n_corrector=2)),
    (sscs, CLD_SDE, {}),
], ids=["em", "pc", "sscs"])
def test_1000_steps_trace_score_a_constant_number_of_times(sampler, sde, options):
  traces = {}
  for num_steps in (10, 1000):
    score, calls = _counting_score(sde)
    # Tracing is what calls score_fn; eval_shape traces without compiling.
    jax.eval_shape(lambda key: sampler(key, sde, score, (16, 2), num_steps=num_steps,
                                       **options), jax.random.PRNGKey(0))
    traces[num_steps] = len(calls)
  # The step is traced once inside lax.scan: 1 score call (PC: 1 + n_corrector).
  expected = 3 if sampler is predictor_corrector else 1
  assert traces == {10: expected, 1000: expected}


def test_1000_step_sampler_is_one_compiled_call():
  score, calls = _counting_score(VP)
  log = _CompileLog()
  logger = logging.getLogger("jax")
  logger.addHandler(log)
  try:
    with jax.log_compiles():
      outs = [euler_maruyama(jax.random.PRNGKey(i), VP, score, (16, 2), num_steps=1000)[0]
              for i in range(3)]
  finally:
    logger.removeHandler(log)
  compiles = [m for m in log.messages if m.startswith("Compiling jit(euler_maruyama)")]
  assert len(compiles) == 1, compiles
  assert len(calls) == 1
  assert not np.allclose(outs[0], outs[1])  # new key, same program


def test_sampler_runs_inside_an_outer_jit_with_traced_parameters():
  """The method-layer pattern: parameters are traced arguments of the caller's jit."""
  @jax.jit
  def sample(mu, rng):
    score = lambda x, t: gaussian_score_fn(VP, mu, S)(x, t)
    return euler_maruyama(rng, VP, score, SHAPE, num_steps=200)[0]

  mean_err, _ = _relative_errors(sample(jnp.asarray(MU), jax.random.PRNGKey(3)))
  assert np.all(mean_err < TOL)


def test_ode_nfe_matches_counted_evaluations():
  """The NFE formula of ``solve_ode`` equals the number of vector-field calls.

  Adaptive Tsit5 (FSAL: 6 calls a step + 1) and fixed-step Heun (2 calls a step).
  """
  count = []

  def field(t, y):
    jax.debug.callback(lambda: count.append(1), ordered=True)
    return -y * (1.0 + jnp.sin(5.0 * t))

  for solver, kwargs in (("tsit5", dict(dt0=1e-3)), ("heun", dict(num_steps=7))):
    count.clear()
    _, nfe = jax.jit(lambda y: solve_ode(field, y, 1.0, 1e-3, solver=solver, **kwargs))(
        jnp.ones(3))
    assert int(nfe) == len(count), (solver, kwargs, int(nfe), len(count))


def test_invalid_combinations_raise():
  with pytest.raises(ValueError, match="CLD"):
    sscs(jax.random.PRNGKey(0), VP, SCORES[VP], (4, 2), num_steps=2)
  with pytest.raises(ValueError, match="sscs"):
    predictor_corrector(jax.random.PRNGKey(0), CLD_SDE, SCORES[CLD_SDE], (4, 2), num_steps=2)
  with pytest.raises(ValueError, match="reverse_diffusion"):
    predictor_corrector(jax.random.PRNGKey(0), VP, SCORES[VP], (4, 2), num_steps=2,
                        predictor="ddim")
