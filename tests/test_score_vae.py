"""ScoreVAE (issue 10): Bayes' rule for scores against closed forms, conditional sampling
recovering an analytic conditional, L_beta against a NumPy recomputation, the frozen
prior, the reconstruction metrics, and the three stages end to end (prior, encoder from
the prior's checkpoint, beta-VAE; wrong prior paths are one error line).

Parameter counts of the paper models are pinned in tests/test_configs.py (PINNED_COUNTS).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import checkpoint, data, methods, train
from lsgm_jax.objectives import score_vae as sv_obj
from tests.helpers import load_config

# Closed-form setting: x_0 ~ N(M 1, S0^2 I) in D = 64 dims (the digits' 8x8x1 shape),
# q(z | x_0) = N(A x_0, TAU^2 I) with A = KAPPA Q^T, Q [D, d] orthonormal columns, so
# every p(z | x_t) is Gaussian with isotropic covariance (a member of the encoder family).
M, S0, TAU, KAPPA = 0.3, 0.5, 0.2, 1.0
LATENT = 4  # score_vae_digits.py:encoder_smoke


def _method(variant="encoder_smoke", **overrides):
  config = load_config("score_vae_digits", variant)
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return methods.build_method(config, data.dataset_info(config.data))


def _orthonormal(d_in, d_out, seed=0):
  q, _ = np.linalg.qr(np.random.RandomState(seed).randn(d_in, d_out))
  return q


def _vp_coeffs(t, beta_min=0.1, beta_max=20.0):
  big_b = beta_min * t + 0.5 * (beta_max - beta_min) * t ** 2
  return np.exp(-0.5 * big_b), np.sqrt(-np.expm1(-big_b)), beta_min + t * (beta_max - beta_min)


def _install_exact_model(method, q):
  """Replaces the method's prior score and encoder by the closed forms of the setting."""
  sde, a_mat = method.sde, jnp.asarray(KAPPA * q.T, jnp.float32)  # [d, D]

  def coeffs(t):  # alpha_t, sigma_t of the VP kernel, [B]
    lmc = sde.log_mean_coeff(t)
    return jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def prior_score(x, t):
    a, s = (c.reshape(-1, 1, 1, 1) for c in coeffs(t))
    return -(x - a * M) / (a ** 2 * S0 ** 2 + s ** 2)

  def encode(x, t):  # the exact p(z | x_t)
    a, s = (c.reshape(-1, 1) for c in coeffs(t))
    flat = x.reshape(x.shape[0], -1)
    v = 1.0 / (1.0 / S0 ** 2 + a ** 2 / s ** 2)
    mu0 = v * (M / S0 ** 2 + a * flat / s ** 2)
    mean = mu0 @ a_mat.T
    logvar = jnp.broadcast_to(jnp.log(KAPPA ** 2 * v + TAU ** 2), mean.shape)
    return mean, logvar

  method.prior_score_fn = lambda model_state, train=False, rng=None: prior_score
  method.encode_fn = lambda enc_params, train=False, rng=None: encode


def test_conditional_score_is_bayes_rule_closed_form():
  """s_prior + grad log q with the exact posterior equals grad log p(x_t | z) of the
  jointly Gaussian (x_t, z), to 1e-4."""
  method = _method()
  q = _orthonormal(64, LATENT)
  _install_exact_model(method, q)
  rng = np.random.RandomState(1)
  t = np.array([0.05, 0.2, 0.5, 0.9], np.float32)
  x = (M + rng.randn(4, 8, 8, 1)).astype(np.float32)
  z = rng.randn(4, LATENT).astype(np.float32)
  score = np.asarray(method.conditional_score({"encoder": {}}, {}, jnp.asarray(z))(
      jnp.asarray(x), jnp.asarray(t)))
  a_mat = KAPPA * q.T
  for b in range(4):
    alpha, sigma, _ = _vp_coeffs(float(t[b]))
    cov_x = (alpha ** 2 * S0 ** 2 + sigma ** 2) * np.eye(64)
    cov_z = (S0 ** 2 * KAPPA ** 2 + TAU ** 2) * np.eye(LATENT)
    cross = alpha * S0 ** 2 * a_mat.T  # Cov(x_t, z)
    gain = cross @ np.linalg.inv(cov_z)
    mean = alpha * M + gain @ (z[b] - a_mat @ np.full(64, M))
    cov = cov_x - gain @ cross.T
    expected = -np.linalg.solve(cov, x[b].reshape(-1) - mean)
    np.testing.assert_allclose(score[b].reshape(-1), expected, rtol=0, atol=1e-4)
  # The prior alone is not the conditional score: the latent term matters here.
  prior = np.asarray(method.prior_score_fn({})(jnp.asarray(x), jnp.asarray(t)))
  assert np.max(np.abs(prior - score)) > 0.1


@pytest.mark.parametrize("em_grid", ["reference", "library"])
def test_conditional_sampling_recovers_analytic_conditional(em_grid):
  """Euler-Maruyama on the conditional reverse SDE (1000 steps to 1e-3) draws from
  p(x_0 | z): mean and variances (along the latent directions and across them)."""
  method = _method(**{"sampling.num_steps": 1000, "sampling.method": "euler_maruyama",
                      "score_vae.em_grid": em_grid})
  q = _orthonormal(64, LATENT)
  _install_exact_model(method, q)
  n = 2000
  z0 = np.array([0.8, -0.5, 0.2, 1.1], np.float32)
  z = jnp.tile(jnp.asarray(z0)[None], (n, 1))
  samples, info = jax.jit(method.decode_latent)({"encoder": {}}, {}, z, jax.random.PRNGKey(0))
  flat = np.asarray(samples, np.float64).reshape(n, -1)
  a_mat = KAPPA * q.T
  s_z = S0 ** 2 * KAPPA ** 2 + TAU ** 2
  mean = M + S0 ** 2 * a_mat.T @ (z0 - a_mat @ np.full(64, M)) / s_z
  var_along = S0 ** 2 - S0 ** 4 * KAPPA ** 2 / s_z
  var_across = S0 ** 2
  np.testing.assert_allclose(flat.mean(0), mean, atol=0.05)
  cov = np.cov(flat, rowvar=False)
  along = np.diag(q.T @ cov @ q)
  proj = np.eye(64) - q @ q.T
  across = np.trace(proj @ cov @ proj) / (64 - LATENT)
  np.testing.assert_allclose(along, var_along, rtol=0.15)
  assert across == pytest.approx(var_across, rel=0.05)
  assert int(info["nfe"]) >= 1000


def _np_l_beta(x0, eps_z, t, noise, w1, w2, u, v, *, beta, exact, weighting):
  """NumPy L_beta for the closed-form encoder mean = x W1 + t u, logvar =
  1/2 tanh(x W2) + t v and prior score -(x - 0.2) / (1 + t)."""
  b = x0.shape[0]
  flat0 = x0.reshape(b, -1).astype(np.float64)
  mean0, lv0 = flat0 @ w1, 0.5 * np.tanh(flat0 @ w2)
  kl = 0.5 * np.sum(mean0 ** 2 + np.exp(lv0) - 1 - lv0, axis=1)
  z = mean0 + np.exp(0.5 * lv0) * eps_z
  alpha, sigma, g2 = _vp_coeffs(t.astype(np.float64))
  xt = alpha[:, None] * flat0 + sigma[:, None] * noise.reshape(b, -1)
  h = xt @ w2
  mu, lv = xt @ w1 + t[:, None] * u, 0.5 * np.tanh(h) + t[:, None] * v
  r = z - mu
  d_mu = r * np.exp(-lv)
  d_lv = 0.5 * r ** 2 * np.exp(-lv) - (0.5 if exact else 0.0)
  grad = d_mu @ w1.T + (d_lv * 0.5 * (1 - np.tanh(h) ** 2)) @ w2.T
  score = -(xt - 0.2) / (1 + t[:, None]) + grad
  weight = g2 if weighting == "g2" else sigma ** 2
  sm = 0.5 * weight * np.sum((score + noise.reshape(b, -1) / sigma[:, None]) ** 2, axis=1)
  return np.mean(sm + beta * kl), np.mean(sm), np.mean(kl)


@pytest.mark.parametrize("log_q,weighting", [("exact", "g2"), ("reference", "g2"),
                                             ("exact", "sigma2")])
def test_l_beta_loss_matches_numpy(log_q, weighting):
  method = _method(**{"score_vae.log_q": log_q, "score_vae.weighting": weighting,
                      "score_vae.beta": 0.05})
  rs = np.random.RandomState(3)
  w1, w2 = rs.randn(64, LATENT) * 0.3, rs.randn(64, LATENT) * 0.3
  u, v = rs.randn(LATENT), rs.randn(LATENT) * 0.2
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

  def encode(x, t):
    flat = x.reshape(x.shape[0], -1)
    t = jnp.broadcast_to(t, (x.shape[0],))[:, None]
    return flat @ f32(w1) + t * f32(u), 0.5 * jnp.tanh(flat @ f32(w2)) + t * f32(v)

  method.prior_score_fn = lambda ms, train=False, rng=None: (
      lambda x, t: -(x - 0.2) / (1 + t.reshape(-1, 1, 1, 1)))
  method.encode_fn = lambda p, train=False, rng=None: encode
  x0 = rs.rand(6, 8, 8, 1).astype(np.float32)
  rng = jax.random.PRNGKey(11)
  value, (metrics, _) = jax.jit(method.loss)({"encoder": {}}, {}, {"x": jnp.asarray(x0)},
                                             rng, 0)
  # The method's draws: loss key -> (z, t, noise), as objectives.score_vae.l_beta_terms.
  loss_rng = jax.random.split(rng, 3)[0]
  z_rng, t_rng, n_rng = jax.random.split(loss_rng, 3)
  eps_z = np.asarray(jax.random.normal(z_rng, (6, LATENT)), np.float64)
  t = np.asarray(jax.random.uniform(t_rng, (6,), minval=1e-3, maxval=1.0), np.float64)
  noise = np.asarray(jax.random.normal(n_rng, x0.shape), np.float64)
  loss, sm, kl = _np_l_beta(x0, eps_z, t, noise, w1, w2, u, v, beta=0.05,
                            exact=log_q == "exact", weighting=weighting)
  assert float(value) == pytest.approx(loss, rel=1e-4)
  assert float(metrics["loss/score_matching"]) == pytest.approx(sm, rel=1e-4)
  assert float(metrics["loss/kl"]) == pytest.approx(kl, rel=1e-4)
  other = _np_l_beta(x0, eps_z, t, noise, w1, w2, u, v, beta=0.05,
                     exact=log_q != "exact", weighting=weighting)[0]
  assert abs(other - loss) > 1e-3 * abs(loss)  # the two forms of log q really differ


def test_gaussian_log_q_and_kl():
  z, mean, logvar = jnp.array([[0.3, -1.0]]), jnp.array([[0.1, 0.5]]), jnp.array([[0.2, -0.4]])
  var = np.exp([0.2, -0.4])
  exact = -0.5 * np.sum((np.array([0.2, -1.5]) ** 2) / var + np.log(2 * np.pi * var))
  assert float(sv_obj.gaussian_log_q(z, mean, logvar)[0]) == pytest.approx(exact, rel=1e-6)
  ref = -0.5 * np.sum((np.array([0.2, -1.5]) ** 2) / var)
  assert float(sv_obj.gaussian_log_q(z, mean, logvar, exact=False)[0]) == pytest.approx(ref)
  kl = 0.5 * np.sum(np.array([0.1, 0.5]) ** 2 + var - 1 - np.array([0.2, -0.4]))
  assert float(sv_obj.kl_standard_normal(mean, logvar)[0]) == pytest.approx(kl, rel=1e-6)
  x, y = jnp.zeros((2, 2, 2, 1)), jnp.ones((2, 2, 2, 1)) * jnp.array([1.0, 0.5])[:, None, None, None]
  np.testing.assert_allclose(sv_obj.per_image_l2(x, y), [2.0, 1.0])  # a norm, not an MSE


def test_lpips_input_scaling():
  """LPIPS sees [-1, 1] by default and the raw [0, 1] images with lpips_input=reference
  (the paper code); identical images score 0."""
  from lsgm_jax.evaluation import reconstruction
  from lsgm_jax.models.perceptual import load_perceptual_net
  import tempfile
  rs = np.random.RandomState(0)
  arrays = {"conv1_1/kernel": rs.randn(3, 3, 3, 4).astype(np.float32),
            "conv1_1/bias": np.zeros(4, np.float32), "lin1": np.ones(4, np.float32),
            "conv2_1/kernel": rs.randn(3, 3, 4, 5).astype(np.float32),
            "conv2_1/bias": np.zeros(5, np.float32), "lin2": np.ones(5, np.float32)}
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "w.npz")
    np.savez(path, **arrays)
    net = load_perceptual_net(path)
  x, y = rs.rand(2, 8, 8, 1).astype(np.float32), rs.rand(2, 8, 8, 1).astype(np.float32)
  assert np.allclose(reconstruction.lpips(net, x, x), 0.0, atol=1e-6)
  correct = reconstruction.lpips(net, x, y, size=16)
  from lsgm_jax.objectives.autoencoder_losses import lpips_distance
  up = lambda a: jax.image.resize(jnp.asarray(a), (2, 16, 16, 1), "bilinear")  # noqa: E731
  np.testing.assert_allclose(
      correct, lpips_distance(net.features(2 * up(x) - 1), net.features(2 * up(y) - 1),
                              net.lin), rtol=1e-5)
  raw = reconstruction.lpips(net, x, y, size=16, reference_input=True)
  np.testing.assert_allclose(
      raw, lpips_distance(net.features(up(x)), net.features(up(y)), net.lin), rtol=1e-5)
  with pytest.raises(FileNotFoundError, match="config.score_vae.lpips_weights_path"):
    reconstruction.load_lpips("/nonexistent.npz")


def test_three_stages_end_to_end(tmp_path):
  """prior -> encoder (frozen prior loaded from the prior's workdir) -> reconstruction
  PNG; the beta-VAE baseline; bad prior paths stop with one line naming the field."""
  one = jax.devices()[:1]
  prior_dir, enc_dir, vae_dir = (str(tmp_path / n) for n in ("prior", "enc", "vae"))
  c_prior = load_config("score_vae_digits", "prior_smoke")
  train.train(c_prior, prior_dir, devices=one)
  saved = checkpoint.load_stage(prior_dir)["ema_params"]["prior"]

  c_enc = load_config("score_vae_digits", "encoder_smoke")
  with c_enc.unlocked():
    c_enc.score_vae.prior_checkpoint = prior_dir
  state = train.train(c_enc, enc_dir, devices=one)
  assert int(state.step) == 2
  # The frozen prior: the prior run's EMA params, bitwise, after two encoder steps; no
  # optimizer state and no EMA for it; the encoder did move.
  loaded = jax.device_get(state.model_state["prior"]["params"])
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(loaded)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  assert set(state.params) == set(state.ema_params) == {"encoder"}
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
  assert not any("prior" in p for p in paths)
  n_enc = sum(x.size for x in jax.tree.leaves(state.params["encoder"]))
  assert sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim) == 2 * n_enc
  moved = [np.max(np.abs(np.asarray(p) - np.asarray(e))) for p, e in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params))]
  assert max(moved) > 0  # the encoder trained (its EMA lags behind)

  info = train.sample(c_enc, enc_dir, devices=one)  # task "reconstruct"
  out = os.path.join(enc_dir, "samples", "step_2")
  assert os.path.isfile(os.path.join(out, "reconstruct.png"))
  rec = np.load(os.path.join(out, "reconstruct.npz"))
  assert rec["originals"].shape == rec["reconstructions"].shape == (4, 8, 8, 1)
  l2 = np.mean(np.sqrt(np.sum((rec["originals"] - np.clip(rec["reconstructions"], 0, 1))
                              ** 2, axis=(1, 2, 3))))
  assert info["l2"] == pytest.approx(l2, rel=1e-5)
  assert json.load(open(os.path.join(out, "info.json")))["nfe"] == 4
  # Method.reconstruct(state, x, rng), as reconstruction FID calls it, traces to images
  # of x's shape (it once had ScoreVAE's own (params, model_state, ...) signature).
  method = methods.build_method(c_enc, data.dataset_info(c_enc.data))
  x_abstract = jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32)
  out_abstract = jax.eval_shape(method.reconstruct, state, x_abstract, jax.random.PRNGKey(0))
  assert out_abstract.shape == (4, 8, 8, 1)

  c_vae = load_config("score_vae_digits", "beta_vae_smoke")
  train.train(c_vae, vae_dir, devices=one)
  results = train.evaluate(c_vae, vae_dir, devices=one)
  assert {"l2", "kl", "recon_l2", "loss"} <= set(results) and results["l2"] > 0

  # Bad input: another family's checkpoint, then an empty path (one line, exit 2).
  with c_enc.unlocked():
    c_enc.score_vae.prior_checkpoint = vae_dir
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"config\.score_vae\.prior_checkpoint=.*beta_vae"):
    train.train(c_enc, str(tmp_path / "other"), devices=one)
  with c_enc.unlocked():
    c_enc.score_vae.prior_checkpoint = ""
  with pytest.raises(ValueError) as error:
    train.train(c_enc, str(tmp_path / "empty"), devices=one)
  # main.py prints such errors as "lsgm_jax: error: <message>" (exit 2): one line.
  assert "\n" not in str(error.value)
  assert str(error.value).startswith("config.score_vae.prior_checkpoint is empty")


def _fake_prior_checkpoint(workdir, method_name, config, params):
  """A checkpoint as train.py writes it, without training (no compile)."""
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  state = {"step": np.int32(5), "params": params, "ema_params": params, "model_state": {}}
  ckpt.save(5, state, {"data_position": 5, "fingerprint": {"method": method_name},
                       "config": config.to_json_best_effort()})
  ckpt.close()


def test_any_sgm_prior_is_accepted_and_mismatches_are_named(tmp_path):
  """A plain 'sgm' run is a valid prior (its bare parameter tree is restored as the
  frozen prior); a prior trained with other model / sde settings, or a CLD model, stops
  with one line that names config.score_vae.prior_checkpoint and the flags to pass."""
  method = _method()
  abstract = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  ones = jax.tree.map(lambda a: np.ones(a.shape, a.dtype),
                      abstract.model_state["prior"]["params"])
  sgm_config = load_config("score_vae_digits", "encoder_smoke")
  with sgm_config.unlocked():
    sgm_config.method = "sgm"
  good = str(tmp_path / "sgm_prior")
  _fake_prior_checkpoint(good, "sgm", sgm_config, ones)
  with method.config.unlocked():
    method.config.score_vae.prior_checkpoint = good
  warm = method.warm_start(state)
  for leaf in jax.tree.leaves(warm.model_state["prior"]["params"]):
    assert np.all(np.asarray(leaf) == 1.0)

  other = load_config("score_vae_digits", "encoder_smoke")
  with other.unlocked():
    other.method = "sgm"
    other.sde.name = "subvpsde"
    other.model.ch_mult = (1, 2)
  bad = str(tmp_path / "other_prior")
  _fake_prior_checkpoint(bad, "sgm", other, ones)
  with method.config.unlocked():
    method.config.score_vae.prior_checkpoint = bad
  with pytest.raises(checkpoint.CheckpointMismatchError) as error:
    method.check_warm_start()
  message = str(error.value)
  assert "\n" not in message and message.startswith("config.score_vae.prior_checkpoint=")
  assert "--config.sde.name=subvpsde" in message and "--config.model.ch_mult=(1,2)" in message

  with other.unlocked():
    other.sde.name = "cld"
  cld = str(tmp_path / "cld_prior")
  _fake_prior_checkpoint(cld, "sgm", other, ones)
  with method.config.unlocked():
    method.config.score_vae.prior_checkpoint = cld
  with pytest.raises(checkpoint.CheckpointMismatchError, match="sde.name='cld'"):
    method.check_warm_start()
  with method.config.unlocked():
    method.config.score_vae.prior_checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.score_vae.prior_checkpoint="):
    method.check_warm_start()
