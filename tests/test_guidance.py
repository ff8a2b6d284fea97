"""Classifier guidance (issue 13, item 1) against closed forms, and the digits pipeline.

Data: a two-class Gaussian mixture p0 = 0.3 N(m_0, s^2 I) + 0.7 N(m_1, s^2 I) in 2-D with
m_0 = (-1.5, 0.5), m_1 = (1.5, -0.5), s = 0.5. Every marginal, class-conditional and the
classifier p_t(y | x) are closed forms (``sde.gaussian.mixture_*``), so Bayes' rule for
scores can be checked exactly: s(x, t) + grad log p_t(y | x) = grad log p_t(x | y).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, guidance, methods, samplers, train
from lsgm_jax.sde import CLD, VESDE, VPSDE, SubVPSDE
from lsgm_jax.sde.gaussian import mixture_log_posterior, mixture_score_fn
from tests.helpers import load_config

MEANS = np.array([[-1.5, 0.5], [1.5, -0.5]])
S = 0.5
WEIGHTS = np.array([0.3, 0.7])
VP = VPSDE()


def _analytic_classifier(sde):
  return lambda x, t: mixture_log_posterior(sde, x, t, jnp.asarray(MEANS), S,
                                            jnp.asarray(WEIGHTS))


@pytest.mark.parametrize("sde", [VP, SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)],
                         ids=["vp", "subvp", "ve"])
def test_guided_score_at_scale_one_is_the_class_conditional_score(sde):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 2)) * 2.0)
    t = jnp.asarray(rng.uniform(1e-3, 1.0, size=64))
    uncond = mixture_score_fn(sde, MEANS, S, WEIGHTS)
    for label in (0, 1):
      labels = jnp.full((64,), label)
      guided = guidance.guided_score_fn(sde, uncond, _analytic_classifier(sde), labels, 1.0)
      exact = mixture_score_fn(sde, MEANS, S, WEIGHTS, label=label)
      np.testing.assert_allclose(jax.jit(guided)(x, t), jax.jit(exact)(x, t), atol=1e-4,
                                 rtol=1e-4)
      # w = 0 is the unconditional score.
      plain = guidance.guided_score_fn(sde, uncond, _analytic_classifier(sde), labels, 0.0)
      np.testing.assert_allclose(jax.jit(plain)(x, t), jax.jit(uncond)(x, t), atol=1e-12)


@pytest.mark.parametrize("name,options", [
    ("euler_maruyama", dict(num_steps=200)),
    ("dpm_solver_pp", dict(num_steps=20)),
], ids=["em", "dpm_solver_pp"])
def test_guided_samples_land_in_their_class(name, options):
  """Guided samples (w = 1, the analytic classifier) are classified into their label by
  the Bayes classifier of p0 >= 99 % of the time (the classes overlap by ~0.1 %), for the
  minority class too (prior 0.3)."""
  num = 2000
  labels = guidance.sample_labels((0, 1), num, 2)
  uncond = mixture_score_fn(VP, MEANS, S, WEIGHTS)
  score = guidance.guided_score_fn(VP, uncond, _analytic_classifier(VP), labels, 1.0)
  x, _ = samplers.get_sampler(name)(jax.random.PRNGKey(0), VP, score, (num, 2), **options)
  posterior = mixture_log_posterior(VP, x, jnp.zeros(num), jnp.asarray(MEANS), S,
                                    jnp.asarray(WEIGHTS))
  predicted = np.asarray(jnp.argmax(posterior, -1))
  for label in (0, 1):
    rows = np.asarray(labels) == label
    assert np.mean(predicted[rows] == label) >= 0.99, (name, label)
  # Without guidance the mixture's 30 / 70 split comes back.
  x, _ = samplers.get_sampler(name)(jax.random.PRNGKey(0), VP, uncond, (num, 2), **options)
  share = float(np.mean(np.asarray(jnp.argmax(mixture_log_posterior(
      VP, x, jnp.zeros(num), jnp.asarray(MEANS), S, jnp.asarray(WEIGHTS)), -1)) == 0))
  assert abs(share - 0.3) < 0.04, share


def test_cld_guidance_adds_the_velocity_gradient():
  """For CLD the classifier sees u = (x, v) and only grad_v enters the velocity score."""
  cld = CLD()
  u = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
  a = jnp.asarray([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]])  # [K, 2C]

  def log_prob(u, t):
    return jax.nn.log_softmax(u @ a.T, axis=-1)

  labels = jnp.asarray([0, 1, 1])
  guided = guidance.guided_score_fn(cld, lambda u, t: jnp.zeros((3, 2)), log_prob, labels, 2.0)
  p = jax.nn.softmax(u @ a.T, axis=-1)
  full_grad = a[labels] - p @ a  # grad_u log softmax_y
  np.testing.assert_allclose(guided(u, jnp.ones(3)), 2.0 * full_grad[:, 2:], rtol=1e-5)


def test_sample_labels():
  np.testing.assert_array_equal(guidance.sample_labels((), 5, 3), [0, 1, 2, 0, 1])
  np.testing.assert_array_equal(guidance.sample_labels((7, 2), 5, 10), [7, 2, 7, 2, 7])
  with pytest.raises(ValueError, match="class_labels"):
    guidance.sample_labels((10,), 4, 10)


def test_digits_classifier_trains_and_guides_the_score_model(tmp_path):
  """noise_classifier_digits:smoke trains and checkpoints; the digits score model then
  restores it through config.sampling.classifier_checkpoint (architecture from the
  checkpoint's own config) and samples guided; a classifier of another SDE is refused."""
  clf_config = load_config("noise_classifier_digits", "smoke")
  one = jax.devices()[:1]
  state = train.train(clf_config, str(tmp_path / "clf"), devices=one)
  assert int(state.step) == 4
  config = load_config("sgm_digits", "smoke")
  config.sampling.classifier_checkpoint = str(tmp_path / "clf")
  config.sampling.guidance_scale = 3.0
  config.sampling.class_labels = (3,)
  config.sampling.method = "ddim"
  config.sampling.num_steps = 2
  sgm = methods.build_method(config, data.dataset_info(config.data))
  params, model_state = sgm.init_params(jax.random.PRNGKey(0))
  x, info = sgm.generate(params, model_state, jax.random.PRNGKey(1), 4)
  assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(np.asarray(x)))
  assert int(info["nfe"]) == 3  # 2 steps + denoising
  # The restored classifier is the trained one, and it moves the score.
  classifier = sgm.classifier
  assert classifier.step == 4 and classifier.num_classes == 10
  u = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 1))
  t = jnp.full((4,), 0.5)
  logp = jax.jit(classifier.log_prob_fn())(u, t)
  np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(-1), 1.0, rtol=1e-5)
  plain = sgm.score_fn(params, model_state)
  guided = guidance.guided_score_fn(sgm.sde, plain, classifier.log_prob_fn(),
                                    jnp.full((4,), 3), 3.0)
  difference = jax.jit(lambda u, t: guided(u, t) - plain(u, t))(u, t)
  assert float(jnp.max(jnp.abs(difference))) > 0.0
  config.sde.name = "subvpsde"
  with pytest.raises(ValueError, match="trained on VPSDE"):
    methods.build_method(config, data.dataset_info(config.data)).classifier
