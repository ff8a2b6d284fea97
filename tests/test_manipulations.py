"""Manipulations of section 5 (lsgm_jax/evaluation/manipulations.py) on a tiny deep VAE
with levels 8, 4, 1 and two 1x1 groups.

Unconditional models use the standard normal prior of section 5, so prior z at
temperature 0 are exactly 0 and a swept latent is exactly its sweep value.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.evaluation import manipulations as manip
from lsgm_jax.models import hvae


def _tiny(**kw) -> hvae.HVAEConfig:
  cfg = dict(
      resolution=8, channels=8, enc_channels=8, channel_mult=(1, 1, 1), ffn_ratio=(0, 2, 2),
      num_groups=(1, 1, 2), enc_layers=(1, 1, 1), num_attention=(0, 1, 0),
      attention_heads=(1, 2, 1), data_channels=1, z_channels=3, remat=(), sigma_q=0.1)
  cfg.update(kw)
  return hvae.HVAEConfig(**cfg)


def _init(cfg):
  """Variables filled from numpy (no XLA compile of the init)."""
  model = hvae.HVAE(cfg)
  x = jnp.zeros((2, 8, 8, 1))
  label = jnp.zeros((2,), jnp.int32) if cfg.num_classes else None
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, x, label))
  r = np.random.RandomState(0)

  def fill(path, s):
    if hvae.SPECTRAL_COLLECTION in jax.tree_util.keystr(path):
      return jnp.full(s.shape, 1.0 / np.sqrt(s.shape[-1]), s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 100
    return jnp.asarray(r.normal(size=s.shape) * 0.5 / np.sqrt(fan_in), s.dtype)

  return model, jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny():
  model, variables = _init(_tiny())
  x = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  return model, variables, x


def test_layer_bookkeeping():
  cfg = _tiny()
  assert manip.layer_resolutions(cfg) == [1, 1, 4, 8]
  assert manip.manifold_layers(cfg) == (0, 1)


def test_posterior_means_decode_to_the_posterior_reconstruction(tiny):
  """Decoding the temperature-0 posterior latents with the prior pass reproduces the
  posterior pass exactly; interpolation endpoints are those reconstructions."""
  model, variables, x = tiny

  @jax.jit
  def run(v):
    zs, out = manip.posterior_latents(model, v, x)
    path = manip.interpolate(model, v, x[:2], x[2:], steps=3)
    return zs, out, path

  zs, out, path = run(variables)
  assert [z.shape for z in zs] == [(4, 1, 1, 3), (4, 1, 1, 3), (4, 4, 4, 3), (4, 8, 8, 3)]
  assert path.shape == (2, 3, 8, 8, 1)
  # The posterior pass is per example, so rows 2: are x[2:]'s reconstructions.
  np.testing.assert_allclose(path[:, 0], out.mean[:2], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(path[:, -1], out.mean[2:], rtol=1e-5, atol=1e-5)
  assert not np.allclose(path[:, 1], path[:, 0], atol=1e-4)


def test_channel_activity_sums_to_the_layer_kl(tiny):
  model, variables, x = tiny
  activity, out = jax.jit(lambda v: (
      manip.channel_activity(model, v, x),
      model.apply(v, x, rngs={"sample": jax.random.PRNGKey(0)})))(variables)
  assert len(activity) == 4 and all(a.shape == (3,) for a in activity)
  assert all(bool(jnp.all(a >= -1e-6)) for a in activity)
  # Same posterior noise key as channel_activity's pass: per-channel KLs add up.
  np.testing.assert_allclose([float(a.sum()) for a in activity], np.mean(out.kl, 0),
                             rtol=1e-4)


def test_manifold_varies_only_the_swept_channels(tiny):
  model, variables, _ = tiny
  size, channels = 3, (2, 0)
  images, zs = jax.jit(lambda v: manip.manifold(
      model, v, jax.random.PRNGKey(4), channels, size=size, value_range=2.25))(variables)
  assert images.shape == (size, size, 8, 8, 1)
  values = np.linspace(-2.25, 2.25, size)
  for layer, z in enumerate(zs):
    z = np.asarray(z)
    if layer in (0, 1):
      c = channels[layer]
      want = np.repeat(values, size) if layer == 0 else np.tile(values, size)
      np.testing.assert_allclose(z[:, 0, 0, c], want, rtol=1e-6)
      others = np.delete(z, c, axis=-1)
      np.testing.assert_array_equal(others, np.broadcast_to(others[:1], others.shape))
    else:  # every grid point shares the rest of the noise
      np.testing.assert_array_equal(z, np.broadcast_to(z[:1], z.shape))
  # Rows differ (first swept layer), columns differ (second).
  assert not np.allclose(images[0, 0], images[-1, 0]) and not np.allclose(
      images[0, 0], images[0, -1])


def test_outpainting_keeps_the_posterior_region(tiny):
  model, variables, x = tiny
  outpaint = jax.jit(lambda v, t: manip.outpaint(
      model, v, x, jax.random.PRNGKey(2), factor=2, temperature=t))
  canvas, used, post = outpaint(variables, 0.0)
  assert canvas.shape == (4, 8, 16, 1)
  assert bool(jnp.all(jnp.isfinite(canvas)))
  for z, p in zip(used, post):
    if p.shape[2] == 1:  # 1x1 latents: intact
      np.testing.assert_array_equal(z, p)
      continue
    w = p.shape[2]
    assert z.shape == p.shape[:2] + (2 * w,) + p.shape[3:]
    np.testing.assert_array_equal(z[:, :, :w], p)  # the known region: exactly q
    np.testing.assert_array_equal(z[:, :, w:], 0.0)  # N(0, I) prior at temperature 0
  # With prior noise the new region is random, the known region still exactly q.
  _, noisy, _ = outpaint(variables, 1.0)
  np.testing.assert_array_equal(noisy[-1][:, :, :8], post[-1])
  assert float(jnp.std(noisy[-1][:, :, 8:])) > 0.5
