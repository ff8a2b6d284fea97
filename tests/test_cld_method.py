"""CLD-SGM through the method interface: paper parameter counts, the velocity-score
parameterisation, and a short end-to-end run on the embedded digits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, likelihood, methods, train
from lsgm_jax.sde.cld import cld_mixed_score
from tests.helpers import load_config


def param_count(config) -> int:
  method = methods.build_method(config, data.dataset_info(config.data))
  abstract = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  return sum(x.size for x in jax.tree.leaves(abstract.params))


def test_cld_cifar_has_the_reference_parameter_count():
  # REFERENCE_NOTES.md: CLD-SGM NCSN++ for CIFAR-10, 107,593,859 trainable.
  assert param_count(load_config("cld_cifar")) == 107_593_859


def test_cld_toy_mlp_has_the_reference_parameter_count():
  # REFERENCE_NOTES.md: CLD-SGM toy MLP, 50,562 trainable.
  assert param_count(load_config("cld_toy")) == 50_562


def _cld_kernel_cov(sde_config, t: float) -> tuple[float, float, float]:
  """(Sigma_xx, Sigma_xv, Sigma_vv) of CLD's perturbation kernel at time t started from
  x0 = 0, v0 ~ N(0, gamma M) (CLD paper, eq. 5: dx = M^-1 v beta dt, dv = (-x - Gamma
  M^-1 v) beta dt + sqrt(2 Gamma beta) dW, Gamma = 2 sqrt(M)): RK4 in B = int beta dt on
  dSigma/dB = A Sigma + Sigma A^T + diag(0, 2 Gamma), plus the numerical eps on the
  diagonal (as the reference)."""
  m_inv, gamma = sde_config.cld_m_inv, sde_config.cld_gamma
  big_gamma = 2.0 / math.sqrt(m_inv)
  a = np.array([[0.0, m_inv], [-1.0, -big_gamma * m_inv]])
  q = np.diag([0.0, 2.0 * big_gamma])
  big_b = sde_config.cld_beta * t + 0.5 * sde_config.cld_beta1 * t ** 2
  sigma = np.diag([0.0, gamma / m_inv])
  f = lambda s: a @ s + s @ a.T + q
  n = 2000
  h = big_b / n
  for _ in range(n):
    k1 = f(sigma)
    k2 = f(sigma + 0.5 * h * k1)
    k3 = f(sigma + 0.5 * h * k2)
    k4 = f(sigma + h * k3)
    sigma = sigma + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  eps = sde_config.cld_numerical_eps
  return sigma[0, 0] + eps, sigma[0, 1], sigma[1, 1] + eps


def test_cld_network_sees_x_and_v_and_predicts_the_velocity_score():
  config = load_config("cld_toy", "smoke")
  config.model.mixed_score = True  # the CIFAR-10 setting (the toy reference has it off)
  method = methods.build_method(config, data.dataset_info(config.data))
  params, ms = method.init_params(jax.random.PRNGKey(0))
  u = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  t = jnp.full((5,), 0.3)
  score = method.score_fn(params, ms)(u, t)
  assert score.shape == (5, 2)
  net = method.model.apply({"params": params}, u, t)
  # Expected, independently of the library's closed forms: the kernel covariance from
  # (x0, v0) ~ (0, N(0, gamma M)) by float64 RK4 on its Lyapunov ODE, then
  # score_v = -v / Sigma_vv - l_t net with l_t = 1 / L_22 = sqrt(Sigma_xx / det Sigma).
  sxx, sxv, svv = _cld_kernel_cov(config.sde, 0.3)
  l_t = np.sqrt(sxx / (sxx * svv - sxv ** 2))
  v = np.asarray(u, np.float64)[:, 2:]
  expected = -v / svv - l_t * np.asarray(net, np.float64)
  np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      score, cld_mixed_score(method.sde, u, t, net, method.sde.hsm_var0v), rtol=1e-6)
  config.model.mixed_score = False
  plain = methods.build_method(config, data.dataset_info(config.data))
  np.testing.assert_allclose(plain.score_fn(params, ms)(u, t), -l_t * np.asarray(net),
                             rtol=1e-5, atol=1e-6)


def test_cld_rejects_scalar_sde_weighting():
  config = load_config("cld_toy", "smoke")
  config.loss.weighting = "none"
  with pytest.raises(ValueError, match="config.loss.weighting='none' is not one of"):
    methods.build_method(config, data.dataset_info(config.data))


def test_cld_digits_trains_samples_and_reports_bits_per_dim(tmp_path):
  config = load_config("cld_digits", "smoke")
  config.training.num_train_steps = 3
  config.eval.likelihood = True
  config.eval.ode_rtol = 1e-2
  config.eval.ode_atol = 1e-2
  state = train.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert int(state.step) == 3
  exp = train.Experiment(config, str(tmp_path), devices=jax.devices()[:1])
  samples, info = train.generate_samples(exp, state, 8, seed=0)
  assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))
  assert info["nfe"] == config.sampling.num_steps + 1
  metrics = train.evaluate_state(exp, state)
  assert np.isfinite(metrics["hsm"]) and metrics["nfe"] > 0
  # An untrained model is a poor density, but bits/dim of 17-level data is bounded
  # below by 0 and the dequantised bound must be finite and positive.
  assert 0 < metrics["bits_per_dim"] < 100
  # bits/dim is the reported bound over 64 pixels with the 17-level bin width 2/17
  # (bits_per_dim's docstring): a 256-level width would be 3.9 bits higher.
  assert metrics["bits_per_dim"] == pytest.approx(
      (metrics["nll_nats"] / 64 - math.log(2 / 17)) / math.log(2), rel=1e-5)


def test_cld_bits_per_dim_add_the_velocity_entropy(monkeypatch):
  """The reported CLD NLL is -(log p(x, v0) + H[N(0, gamma M I)]) (CLD paper, likelihood
  bound), H = D/2 (1 + log(2 pi gamma M)) over the D = 64 pixels: with the joint ODE term
  stubbed to 0, what remains is exactly -H, and bits/dim adds log2(17/2) to -H / D."""
  config = load_config("cld_digits", "smoke")
  config.eval.likelihood = True
  method = methods.build_method(config, data.dataset_info(config.data))
  seen = []

  def joint_log_likelihood(rng, sde, score_fn, u, **options):
    seen.append(u.shape)
    return jnp.zeros(u.shape[:1]), jnp.asarray(5, jnp.int32)

  monkeypatch.setattr(likelihood, "log_likelihood", joint_log_likelihood)
  x = jnp.zeros((3, 8, 8, 1))
  terms = method.likelihood_terms(lambda u, t: jnp.zeros_like(u[..., :1]), x,
                                  jax.random.PRNGKey(0))
  assert seen == [(3, 8, 8, 2)]  # the ODE ran on u = (x, v0)
  gamma_m = config.sde.cld_gamma / config.sde.cld_m_inv  # 0.01
  entropy = 0.5 * 64 * (1 + math.log(2 * math.pi * gamma_m))  # -56.6 nats
  np.testing.assert_allclose(terms["nll_nats"], -entropy, rtol=1e-6)
  np.testing.assert_allclose(terms["bits_per_dim"],
                             (-entropy / 64 + math.log(17 / 2)) / math.log(2), rtol=1e-6)
