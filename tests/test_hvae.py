"""Tests for the latent VAE's deep hierarchical VAE (lsgm_jax/models/hvae.py).

Paper-size models are only shape-evaluated (``jax.eval_shape``); everything that runs
uses a tiny 8x8, two-level configuration.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from lsgm_jax.models import hvae
from lsgm_jax.models import hvae_layers, hvae_losses
from lsgm_jax.presets import hvae as hvae_presets


# --- parameter counts (latent VAE paper, Table 5) -------------------------------

@pytest.mark.parametrize("name,expected", [
    ("church", 119_137_672),
    ("bedroom_f4", 96_241_478),
    ("imagenet256", 386_366_344),
])
def test_reference_config_param_counts(name, expected):
  cfg = hvae_presets.CONFIGS[name]()
  if name != "church":  # remat changes no parameter (checked on church); it only
    cfg = dataclasses.replace(cfg, remat=())  # slows the tracing down
  assert hvae.count_params(cfg) == expected


@pytest.mark.parametrize("name,table", [
    ("church_rgb32", 119.1e6),
    ("church_upsampler", 62.8e6),
    ("church_pixel", 143.3e6),
    ("bedroom_f8", 107.2e6),
    ("bedroom_f16", 99.8e6),
])
def test_table5_param_counts_within_one_percent(name, table):
  n = hvae.count_params(dataclasses.replace(hvae_presets.CONFIGS[name](), remat=()))
  assert abs(n - table) / table < 0.01, n


# --- small helpers --------------------------------------------------------------

def test_level_resolutions_collapse_below_four():
  assert hvae.level_resolutions(32, 5) == (32, 16, 8, 4, 1)
  assert hvae.level_resolutions(64, 6) == (64, 32, 16, 8, 4, 1)
  assert hvae.level_resolutions(256, 8) == (256, 128, 64, 32, 16, 8, 4, 1)


def _reference_placement(n: int, k: int, first: int) -> list[int]:
  """latent-vae-jax: indices round(i n / (k + 1)), i = 1..k (general_utils.py), matched
  by ``i in indices`` against ``range(1, n + 1)`` in the generator and ``range(n)`` in
  the encoder (model.py): the layers after which attention follows."""
  indices = [round(n / (k + 1) * i) for i in range(1, k + 1)] if k else []
  return [i for i in range(first, first + n) if i in indices]


def test_attention_positions():
  assert hvae.attention_positions(8, 0) == ()
  assert hvae.attention_positions(8, 4) == (2, 3, 5, 6)  # Church generator levels
  assert hvae.attention_positions(16, 1) == (8,)
  # Church encoder levels (4 blocks, 4 attention): after 0-based blocks 1, 2, 3, i.e.
  # after the 2nd, 3rd and 4th block, as the reference's encoder.
  assert hvae.attention_positions(4, 4, first=0) == (1, 2, 3)
  assert hvae.attention_positions(1, 1, first=1) == ()  # round(0.5) = 0: none
  for n in range(1, 13):
    for k in range(0, 6):
      for first in (0, 1):
        assert list(hvae.attention_positions(n, k, first)) == _reference_placement(n, k, first)


def test_config_validation():
  with pytest.raises(ValueError):
    dataclasses.replace(_tiny(), num_groups=(1,))
  with pytest.raises(ValueError):
    dataclasses.replace(_tiny(), hierarchical_prior=False)


# --- guidance (paper eq. 2) -----------------------------------------------------

def test_guided_prior_closed_form():
  mu_c, mu_u = jnp.array([1.0, -2.0]), jnp.array([0.5, 1.0])
  s_c, s_u = jnp.array([0.5, 2.0]), jnp.array([1.0, 0.5])
  mean, var = hvae_losses.guided_prior(mu_c, s_c, mu_u, s_u, 1.5, 3.0)
  np.testing.assert_allclose(mean, mu_c + 1.5 * (mu_c - mu_u), rtol=1e-6)
  np.testing.assert_allclose(var, s_c ** 2 * (s_c / s_u) ** 6, rtol=1e-5)
  mean0, var0 = hvae_losses.guided_prior(mu_c, s_c, mu_u, s_u, 0.0, 0.0)
  np.testing.assert_array_equal(mean0, mu_c)
  np.testing.assert_allclose(var0, s_c ** 2, rtol=1e-6)


def test_guided_layer_follows_eq2_with_hand_set_priors():
  """Replace the prior block's output by hand-set priors and read back z."""
  feat, zc, w_mu, w_sigma = 4, 2, 1.5, 2.0
  layer = hvae.StochasticLayer(feat, zc, 4, 2, 1.0, hierarchical_prior=True)
  x = jnp.zeros((1, 4, 4, feat))
  label, null = jnp.ones((1, 3)), jnp.zeros((1, 3))
  variables = _host_init(layer.init, x, x, jnp.zeros((1, 4, 4, zc)), label, label)
  r = np.random.RandomState(0)
  mu_c, mu_u = r.randn(1, 4, 4, zc), r.randn(1, 4, 4, zc)
  raw_c, raw_u = r.randn(1, 4, 4, zc), r.randn(1, 4, 4, zc)
  h = np.zeros((1, 4, 4, feat))
  out_c = jnp.asarray(np.concatenate([mu_c, raw_c, h], -1), jnp.float32)
  out_u = jnp.asarray(np.concatenate([mu_u, raw_u, h], -1), jnp.float32)
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.module.name == "prior" and context.method_name == "__call__":
      return jnp.where(args[1][0, 0] == 1.0, out_c, out_u), jnp.zeros(())
    if context.module.name == "z_proj" and context.method_name == "__call__":
      seen["z"] = args[0]
    return next_fun(*args, **kwargs)

  key = _key(7)

  @jax.jit
  def run():
    with nn.intercept_methods(interceptor):
      layer.apply(variables, key, x, x, label, null, w_mu, w_sigma, 1.0,
                  method=hvae.StochasticLayer.sample)
    return seen["z"]

  z = run()
  var_c = np.asarray(hvae_losses.smoothed_variance(jnp.asarray(raw_c, jnp.float32)))
  var_u = np.asarray(hvae_losses.smoothed_variance(jnp.asarray(raw_u, jnp.float32)))
  mean = mu_c + w_mu * (mu_c - mu_u)
  var = var_c * (var_c / var_u) ** w_sigma  # sigma_c^2 (sigma_c/sigma_u)^(2 w_sigma)
  eps = np.asarray(jax.random.normal(key, (1, 4, 4, zc)))
  np.testing.assert_allclose(z, mean + np.sqrt(var) * eps, rtol=1e-4, atol=1e-5)


# --- tiny model -----------------------------------------------------------------
# XLA compilation dominates on CPU, so the tiny model is initialised once per module
# and every jitted function is compiled once.

def _tiny(**kw) -> hvae.HVAEConfig:
  cfg = dict(
      resolution=8, channels=16, enc_channels=8, channel_mult=(1, 2), ffn_ratio=(0, 2),
      num_groups=(1, 2), enc_layers=(1, 1), num_attention=(1, 1),
      attention_heads=(2, 1), data_channels=3, z_channels=4, num_classes=5,
      hierarchical_prior=True, remat=(), sigma_q=0.1)
  cfg.update(kw)
  return hvae.HVAEConfig(**cfg)


def _key(seed):
  # RBG keys: threefry sampling compiles several times slower on CPU.
  return jax.random.key(seed, impl="rbg")


def _host_init(init_fn, *args):
  """Variables of the right shapes filled from numpy (no XLA compile of the init)."""
  rngs = {"params": _key(0), "sample": _key(1)}
  shapes = jax.eval_shape(lambda: init_fn(rngs, *args))
  r = np.random.RandomState(0)

  def fill(path, s):
    if hvae.SPECTRAL_COLLECTION in str(path[0]):
      return jnp.full(s.shape, 1.0 / np.sqrt(s.shape[-1]), s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 100
    return jnp.asarray(r.normal(size=s.shape) * 0.5 / np.sqrt(fan_in), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _init(cfg, batch=2):
  model = hvae.HVAE(cfg)
  x = jnp.asarray(np.random.RandomState(3).normal(size=(batch, 8, 8, cfg.data_channels)),
                  jnp.float32)
  label = jnp.arange(batch) % cfg.num_classes if cfg.num_classes else None
  return model, _host_init(model.init, x, label), x, label


@pytest.fixture(scope="module")
def tiny():
  return (_tiny(),) + _init(_tiny())


def test_tiny_forward_and_loss(tiny):
  cfg, model, variables, x, label = tiny

  def loss_fn(params):
    out, new_state = model.apply({**variables, "params": params}, x, label,
                                 rngs={"sample": _key(2)},
                                 mutable=[hvae.SPECTRAL_COLLECTION])
    terms = hvae_losses.loss_terms(out, x, cfg.sigma_q, cfg.spectral_weight)
    return jnp.mean(terms["loss"]), (out, new_state)

  # Forward only: compiling the backward pass would triple this test's CPU time.
  loss, (out, new_state) = jax.jit(loss_fn)(variables["params"])
  assert out.kl.shape == (2, cfg.total_groups)
  assert out.mean.shape == out.logvar.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(out.kl)))
  assert bool(jnp.all(out.kl >= -1e-6))  # KL >= 0 up to float rounding
  assert bool(jnp.isfinite(loss)) and bool(jnp.isfinite(out.spectral))
  # The power iteration advanced the spectral vectors.
  u_old = jax.tree_util.tree_leaves(variables[hvae.SPECTRAL_COLLECTION])
  u_new = jax.tree_util.tree_leaves(new_state[hvae.SPECTRAL_COLLECTION])
  assert len(u_old) == len(u_new) == 2 * cfg.total_groups
  assert any(not np.allclose(a, b) for a, b in zip(u_old, u_new))


def test_guided_sampler_with_zero_weights_matches_conditional(tiny):
  cfg, model, variables, _, _ = tiny
  key, label = _key(5), jnp.array([0, 2, 4])
  cond = jax.jit(lambda v: model.apply(v, key, 3, label, temperature=0.8,
                                       method=hvae.HVAE.sample))(variables)
  guided = jax.jit(lambda v, wm, ws: model.apply(
      v, key, 3, label, guided=True, w_mu=wm, w_sigma=ws, temperature=0.8,
      method=hvae.HVAE.sample))
  assert cond.shape == (3, 8, 8, cfg.data_channels)
  assert bool(jnp.all(jnp.isfinite(cond)))
  # Two differently compiled programs: equal up to float32 rounding (the suite compiles
  # with XLA's cheap CPU settings, whose fusion differs by an ulp here and there).
  np.testing.assert_allclose(guided(variables, 0.0, 0.0), cond, rtol=1e-5, atol=1e-6)
  strong = guided(variables, 1.5, 1.0)
  assert bool(jnp.all(jnp.isfinite(strong))) and not np.allclose(strong, cond)


def test_tiny_unconditional_upsampler_forward_and_sample():
  cfg = _tiny(num_classes=0, hierarchical_prior=False, lowres_conditioning=True,
              remat=(True, False))
  model, variables, x, _ = _init(cfg)
  out = jax.jit(lambda v: model.apply(v, x, rngs={"sample": _key(2)}))(
      variables)
  assert out.kl.shape == (2, cfg.total_groups)
  assert bool(jnp.all(jnp.isfinite(out.kl))) and bool(jnp.all(out.kl >= -1e-6))
  terms = hvae_losses.loss_terms(out, x, cfg.sigma_q)
  assert bool(jnp.all(jnp.isfinite(terms["loss"])))
  lowres = model.apply(variables, x, method=hvae.HVAE.downsample_input)
  assert lowres.shape == (2, 4, 4, 3)
  samples = jax.jit(lambda v: model.apply(v, _key(4), 2, lowres=lowres,
                                           method=hvae.HVAE.sample))(variables)
  assert samples.shape == x.shape and bool(jnp.all(jnp.isfinite(samples)))


def test_attention_is_real_attention():
  """Guards against the reference's defect (its output is a projection of q)."""
  heads, c = 2, 8
  attn = hvae_layers.Attention(c, heads)
  x = jnp.asarray(np.random.RandomState(0).normal(size=(1, 2, 2, c)), jnp.float32)
  params = _host_init(attn.init, x)["params"]
  params = {**params, "out": {"kernel": jnp.eye(c), "bias": jnp.zeros(c)}}
  got = attn.apply({"params": params}, x)
  seq = x.reshape(1, 4, c)
  qkv = seq @ params["qkv"]["kernel"] + params["qkv"]["bias"]
  q, k, v = (t.reshape(1, 4, heads, c // heads) for t in jnp.split(qkv, 3, -1))
  w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(c // heads), -1)
  want = seq + jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(1, 4, c)
  np.testing.assert_allclose(got.reshape(1, 4, c), want, rtol=1e-5, atol=1e-5)


def test_reference_attention_reproduces_the_reference_defect():
  """latent-vae-jax's multi-head AttentionLayer returns x + Dense_out(q) (its attention
  result is overwritten by a reshape of q); ``reference_defect=True`` reproduces that,
  the default attends; with one head both agree."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  attn = hvae_layers.Attention(8, 2)
  params = attn.init(jax.random.PRNGKey(0), x)["params"]
  params = jax.tree_util.tree_map(
      lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3, jnp.float32), params)
  seq = np.asarray(x).reshape(2, 16, 8)
  q = seq @ np.asarray(params["qkv"]["kernel"])[:, :8] + np.asarray(params["qkv"]["bias"])[:8]
  expected = seq + q @ np.asarray(params["out"]["kernel"]) + np.asarray(params["out"]["bias"])
  defect = hvae_layers.Attention(8, 2, reference_defect=True).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(defect).reshape(2, 16, 8), expected, rtol=1e-5,
                             atol=1e-5)
  correct = attn.apply({"params": params}, x)
  assert np.max(np.abs(np.asarray(correct) - np.asarray(defect))) > 1e-2
  one = hvae_layers.Attention(8, 1)
  p1 = one.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(
      one.apply(p1, x), hvae_layers.Attention(8, 1, reference_defect=True).apply(p1, x))
