"""LSGM method (issue 5): gradient routing, KL
warm-up / balancing, the mixed score at initialisation, the cross entropy and the NELBO
path against closed forms, and the two stages end to end (load, resume, wrong path)."""

from __future__ import annotations

import copy
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, methods, train
from lsgm_jax.objectives import lsgm as lsgm_obj
from lsgm_jax.objectives import nvae_kl, spectral_regularization
from lsgm_jax.methods.lsgm import _routed, same_objectives
from lsgm_jax.models import nvae as nvae_lib
from tests import numpy_nvae
from tests.helpers import load_config

# Paper-size parameter counts are pinned in tests/test_configs.py (PINNED_COUNTS).


def _method(name, variant, **overrides):
  config = load_config(name, variant)
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return methods.build_method(config, data.dataset_info(config.data)), config


def test_kl_warmup_is_continuous_across_stages():
  """Stage 1 ends where stage 2 starts (the schedule spans both stages explicitly)."""
  for name, vae_variant, vada_variant in [("lsgm_cifar", "balanced_vae", "balanced"),
                                          ("lsgm_cifar", "best_fid_vae", "best_fid"),
                                          ("lsgm_cifar", "best_nll_vae", "best_nll"),
                                          ("lsgm_mnist", "vae", "lsgm"),
                                          ("lsgm_omniglot", "vae", "lsgm"),
                                          ("lsgm_digits", "vae", "lsgm")]:
    m1, c1 = _method(name, vae_variant)
    m2, _ = _method(name, vada_variant)
    end = float(m1._kl_coeff(c1.training.num_train_steps))
    start = float(m2._kl_coeff(0))
    assert end == pytest.approx(start, abs=1e-3), (name, end, start)  # const_portion 1e-4
    assert float(m2._kl_coeff(10**9)) == 1.0


def test_kl_coeff_and_balancer():
  assert float(nvae_kl.kl_coeff(0, 100, 10, 1e-4, 0.7)) == pytest.approx(1e-4)
  assert float(nvae_kl.kl_coeff(60, 100, 10, 1e-4, 0.7)) == pytest.approx(1e-4 + 0.7 * 0.5 - 1e-4 * 0.5)
  assert float(nvae_kl.kl_coeff(500, 100, 10, 1e-4, 0.7)) == pytest.approx(0.7)
  alpha = nvae_kl.kl_balancer_coeff(2, (4, 2), "square")
  # Coarsest scale first: 1/2 per group there, 4/4 at the finer scale; min -> 1.
  np.testing.assert_allclose(alpha, [1, 1, 2, 2, 2, 2])
  kl = jnp.array([[1.0, 3.0], [3.0, 5.0]])
  plain = nvae_kl.kl_balancer(kl, 0.5, False, np.ones(2))
  np.testing.assert_allclose(plain.kl, [2.0, 4.0])
  bal = nvae_kl.kl_balancer(kl, 0.5, True, np.ones(2))
  w = np.array([2.01, 4.01]) * 6.02
  w = w / w.mean()
  np.testing.assert_allclose(bal.group_coeffs, w, rtol=1e-6)
  np.testing.assert_allclose(bal.kl, 0.5 * (kl @ w), rtol=1e-6)
  # At coefficient 1 balancing switches off.
  np.testing.assert_allclose(nvae_kl.kl_balancer(kl, 1.0, True, np.ones(2)).kl, [4.0, 8.0])


def test_routed_gradients():
  """One evaluation; q's cotangent reaches only z, p's only the parameters."""
  calls = []

  def fn(p, z):
    calls.append(1)
    return p * z ** 2

  def loss(p, z, a, b):
    out_q, out_p = _routed(fn, p, z)
    return a * jnp.sum(out_q) + b * jnp.sum(out_p)

  p, z = jnp.array(3.0), jnp.array([1.0, 2.0])
  gp, gz = jax.grad(loss, argnums=(0, 1))(p, z, 2.0, 5.0)
  assert float(gp) == pytest.approx(5.0 * float(jnp.sum(z ** 2)))
  np.testing.assert_allclose(gz, 2.0 * 2 * p * z)
  assert same_objectives("ll_iw", "reweight_p_samples")
  assert not same_objectives("drop_all_iw", "reweight_p_samples")
  assert not same_objectives("ll_iw", "ll_uniform")


def test_spectral_penalty_matches_svd():
  rng = np.random.RandomState(0)
  params = {"a": {"kernel": jnp.asarray(rng.randn(3, 3, 4, 5), jnp.float32)},
            "b": {"kernel": jnp.asarray(rng.randn(1, 1, 6, 2), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.randn(4, 4), jnp.float32)}}
  vectors = spectral_regularization.init_power_vectors(params, jax.random.PRNGKey(0), 200)
  penalty, _ = spectral_regularization.spectral_penalty(params, vectors, 4)
  expected = sum(np.linalg.svd(np.asarray(params[k]["kernel"]).reshape(-1, s), compute_uv=False)[0]
                 for k, s in (("a", 5), ("b", 2)))
  assert float(penalty) == pytest.approx(expected, rel=1e-4)


def _tiny_vada(**overrides):
  return _method("lsgm_digits", "lsgm_smoke", **overrides)


# A two-scale NVAE (top 2x2 group under the SGM prior, a 4x4 group under N(0, I)) so
# that the NELBO has every kind of term: reconstruction, log q, the SGM prior's NLL and
# the lower scales' N(0, I) cross entropy.
TWO_SCALES = {"lsgm.vae.num_latent_scales": 2, "lsgm.vae.num_groups_per_scale": 1,
              "lsgm.vae.channel_mult": (1, 2, 2)}
NOISE_KEY = 1234


class _FixedNoiseNVAE(nvae_lib.NVAE):
  """The NVAE with its posterior noise fixed: group g of shape S draws
  ``jax.random.normal(PRNGKey(NOISE_KEY), S)`` whatever rng the caller passes."""

  def make_rng(self, name="params"):
    if name == "sample":
      return jax.random.PRNGKey(NOISE_KEY)
    return super().make_rng(name)


@pytest.fixture(scope="module")
def exact_prior_vada():
  """A tiny stage-2 model whose SGM is the exact N(0, I) prior (mixing logit -inf)."""
  method, _ = _tiny_vada(**{"eval.likelihood": True, "eval.ode_rtol": 1e-5,
                            "eval.ode_atol": 1e-5}, **TWO_SCALES)
  # Filled on the host from the abstract shapes: no XLA compile of the init.
  r = np.random.RandomState(0)

  def fill(x):  # kernels ~ N(0, 1 / fan_in); vectors (biases, log-gains) ~ N(0, 0.1^2)
    if len(x.shape) < 2:
      return jnp.asarray(0.1 * r.normal(size=x.shape), x.dtype)
    return jnp.asarray(r.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1])), x.dtype)
  params, state = jax.tree.map(fill, jax.eval_shape(method.init_params,
                                                    jax.random.key(0, impl="rbg")))
  params["score"]["mixing_logit"] = jnp.full_like(params["score"]["mixing_logit"], -jnp.inf)
  return method, params, state


def test_mixed_score_at_minus_infinity_is_the_normal_prior_score(exact_prior_vada):
  method, params, state = exact_prior_vada
  z = jax.random.normal(jax.random.PRNGKey(1), (3,) + method.latent_shape)
  t = jnp.array([0.05, 0.5, 0.9])
  score = method.score_fn(params, state)(z, t)
  # VP with sigma2_0 = 0: z_t ~ N(0, I) for N(0, I) latents, score -z (exactly).
  np.testing.assert_allclose(score, -z, rtol=1e-5, atol=1e-6)


def test_cross_entropy_with_exact_score_equals_closed_form():
  """LSGM Theorem 1 with the exact score of the Normal reference (the mixing component):
  the DSM estimate plus the t = 1 term equals CE(q_eps || N(0, I)) in closed form, for
  q = N(mu, s^2) perturbed by the kernel at t = time_eps."""
  method, _ = _tiny_vada()
  diffusion = method.diffusion
  d, n = 4, 20000
  mu, s = 0.6, 0.5
  z0 = mu + s * jax.random.normal(jax.random.PRNGKey(0), (n, d))
  eps_normal = lambda z, t: diffusion.mixing_component(z, t)
  ce = lsgm_obj.cross_entropy(jax.random.PRNGKey(1), diffusion, eps_normal, None, z0,
                              iw_sample_q="ll_uniform", time_eps=1e-2, include_terminal=True)
  m = float(diffusion.e2int_f(jnp.array(1e-2)))
  var = float(diffusion.var(jnp.array(1e-2)))
  # q_eps = N(m mu, m^2 s^2 + var); CE with N(0, m^2 + var) = N(0, 1) for VP.
  pvar = m ** 2 + var
  qvar = m ** 2 * s ** 2 + var
  closed = d * (0.5 * math.log(2 * math.pi * pvar) + ((m * mu) ** 2 + qvar) / (2 * pvar))
  est = float(jnp.mean(ce.per_example))
  stderr = float(jnp.std(ce.per_example)) / math.sqrt(n)
  assert abs(est - closed) < 4 * stderr + 1e-3, (est, closed, stderr)


def test_nelbo_path_against_closed_form(exact_prior_vada):
  """Every NELBO term of ``eval_terms`` against an independent NumPy float64 forward pass
  of the NVAE (tests/numpy_nvae.py) with the same fixed posterior noise: reconstruction,
  log q(z|x) of both groups, the N(0, I) cross entropy of the 4x4 group, and the top
  group's NLL, which the probability-flow ODE computes and which with the exact N(0, I)
  score (mixing logit -inf) is -log N(z0; 0, I); bits/dim divides by the 64 pixels once
  (LSGM issue 13). BatchNorm scales / shifts and running statistics are randomised so
  that none of them is an identity."""
  method, params, state = exact_prior_vada
  r = np.random.RandomState(0)

  def randomise(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(r.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if name in ("bias", "mean") and any(getattr(k, "key", "") == "bn" for k in path):
      return jnp.asarray(r.normal(0.0, 0.3, leaf.shape), leaf.dtype)
    return leaf
  params = dict(params, vae=jax.tree_util.tree_map_with_path(randomise, params["vae"]))
  state = dict(state, vae=dict(state["vae"], batch_stats=jax.tree_util.tree_map_with_path(
      randomise, state["vae"]["batch_stats"])))
  method = copy.copy(method)
  method.vae = _FixedNoiseNVAE(method.vae_cfg)
  x = jnp.where(jax.random.uniform(jax.random.PRNGKey(3), (4, 8, 8, 1)) > 0.5, 1.0, -1.0)
  terms = jax.jit(method.eval_terms)(params, state, {"x": x}, jax.random.PRNGKey(7))

  noise = [np.asarray(jax.random.normal(jax.random.PRNGKey(NOISE_KEY), (4,) + shape))
           for shape in method.vae_cfg.latent_shapes()]
  to_np = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
  ref = numpy_nvae.tiny_two_scale_nelbo(to_np(params["vae"]),
                                        to_np(state["vae"]["batch_stats"]), np.asarray(x), noise)
  # Magnitudes of a working model (rtol 1e-5 is ~1e-3 nats): recon ~47, log q ~-120,
  # top NLL ~25, lower-scale cross entropy ~130, NELBO ~80.
  assert np.all(np.abs(ref["nelbo"]) < 1e3) and np.all(np.abs(ref["log_q"]) > 10)
  np.testing.assert_allclose(terms["recon"], ref["recon"], rtol=1e-5)
  np.testing.assert_allclose(terms["nelbo"], ref["nelbo"], rtol=1e-5)
  np.testing.assert_allclose(terms["bits_per_dim"], ref["nelbo"] / (64 * math.log(2)),
                             rtol=1e-5)
  assert np.all(np.asarray(terms["nfe"]) > 0)


def test_two_stages_end_to_end(tmp_path):
  """Stage 1 trains; stage 2 loads it (VAE params equal), trains, resumes exactly without
  stage 1 on disk; a wrong stage-1 path is one clear error line."""
  stage1, stage2 = str(tmp_path / "vae"), str(tmp_path / "lsgm")
  one = jax.devices()[:1]  # the multi-device paths are tested in test_train.py
  config1 = load_config("lsgm_digits", "vae_smoke")
  config2 = load_config("lsgm_digits", "lsgm_smoke")
  # Another seed for stage 1, so that stage 2's own fresh init is far from the stage-1
  # VAE (with one seed both inits coincide and 2 trained steps barely move them apart).
  config1.seed = config2.seed + 1
  train.train(config1, stage1, devices=one)
  with config2.unlocked():
    config2.lsgm.vae_checkpoint = stage1
    config2.training.num_train_steps = 3
    config2.checkpoint.every_steps = 1  # steps 1, 2, 3 kept: the resume below uses 2
  state2 = jax.device_get(train.train(config2, stage2, devices=one))
  assert int(state2.step) == 3
  s1 = train.Experiment(config1, stage1, devices=one).restore_for_inference()[0]
  # Stage 2 started from the stage-1 VAE: each of its 3 AdamW steps moves a parameter by
  # at most ~lr (Adam's normalised step is <= ~1; decoupled decay lr * 3e-4 * |w|).
  # A stage 2 that ignored the checkpoint is its own fresh init plus those 3 steps.
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  a, b = flat(s1.params["vae"]), flat(state2.params["vae"])
  step_bound = 3 * 2.0 * config2.optim.lr
  assert np.max(np.abs(a - b)) < step_bound
  # The EMA (stage 1 keeps none: its EMA is its params) was loaded too: decay 0.999.
  assert np.max(np.abs(flat(state2.ema_params["vae"]) - a)) < step_bound
  # Resume (the same program: a compilation-cache hit): stage 1 may be gone, the
  # workdir's own step-2 checkpoint is used and step 3 is redone bit for bit.
  shutil.rmtree(stage1)
  shutil.rmtree(os.path.join(stage2, "checkpoints", "3"))
  resumed = jax.device_get(train.train(config2, stage2, devices=one))
  assert int(resumed.step) == 3
  for x, y in zip(jax.tree.leaves((state2.params, state2.ema_params, state2.opt_state)),
                  jax.tree.leaves((resumed.params, resumed.ema_params, resumed.opt_state))):
    np.testing.assert_array_equal(x, y)
  # Wrong path: a clear error naming the field, raised before anything compiles (main.py
  # prints it as one "lsgm_jax: error:" line, exit 2, as every FileNotFoundError).
  with config2.unlocked():
    config2.lsgm.vae_checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.lsgm.vae_checkpoint="):
    train.train(config2, str(tmp_path / "other"), devices=one)
