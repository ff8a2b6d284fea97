"""Latent diffusion (Rombach et al. 2022): the sgm method on an autoencoder's latents,
end to end (encode -> train -> sample decoded to image shape), and its numbers."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import checkpoint, data, encode_latents, methods, train
from lsgm_jax.config_defaults import get_default_config
from lsgm_jax.sde.gaussian import gaussian_logp
from tests.helpers import load_config


def _autoencoder_config():
  config = get_default_config()
  config.method = "autoencoder"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  a = config.autoencoder
  a.ch, a.ch_mult, a.num_res_blocks, a.num_groups = 8, (1, 2), 1, 4
  a.z_channels, a.embed_dim, a.disc_ndf, a.disc_layers = 2, 2, 8, 1
  config.eval.batch_size = 297
  config.checkpoint.async_save = False
  config.parallel.data = 1
  return config


def _ldm_config(latents_dir, first_stage, variant="smoke"):
  config = load_config("ldm_digits", variant)
  config.data.name = "latents"
  config.data.latents_dir = latents_dir
  config.ldm.first_stage = first_stage
  config.model.nf = 16
  config.model.ch_mult = (1,)  # one level: the smallest program to compile
  config.checkpoint.async_save = False
  config.checkpoint.every_steps = 4
  config.parallel.data = 1
  return config


def _host_fill(abstract, seed=0):
  """Arrays of the abstract tree's shapes from numpy (no XLA init to compile)."""
  r = np.random.RandomState(seed)

  def fill(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    return (r.normal(size=x.shape) / np.sqrt(fan_in)).astype(x.dtype)
  return jax.tree.map(fill, abstract)


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
  """A random first stage, its encoded digits, a 4-step VP run on them and
  ``--mode=sample`` of it (one compiled train step, one compiled sampler)."""
  root = tmp_path_factory.mktemp("ldm")
  devices = jax.devices()[:1]
  ae_config, ae_dir = _autoencoder_config(), str(root / "ae")
  exp = train.Experiment(ae_config, ae_dir, devices=devices)
  a = exp.abstract_state
  state = a.replace(params=_host_fill(a.params), ema_params=_host_fill(a.params, seed=1),
                    opt_state=jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), a.opt_state),
                    model_state=jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                                             a.model_state),
                    rng=np.zeros(a.rng.shape, a.rng.dtype), step=np.int32(1),
                    num_skipped=np.int32(0), consecutive_skips=np.int32(0))
  ckpt = checkpoint.Checkpointer(ae_dir, ae_config.checkpoint)
  ckpt.save(1, state, {"data_position": 1, "fingerprint": exp.fingerprint,
                       "config": ae_config.to_json_best_effort()})
  ckpt.close()
  summary = encode_latents.encode(ae_config, ae_dir, devices=devices)
  config = _ldm_config(summary["latents_dir"], ae_dir)
  workdir = str(root / "ldm")
  state = train.train(config, workdir, devices=devices)
  info = train.sample(config, workdir, devices=devices)
  return dict(config=config, workdir=workdir, state=state, ae_dir=ae_dir, info=info,
              latents_dir=summary["latents_dir"])


def test_sample_mode_writes_decoded_images_equal_to_decode_of_the_sampler_output(ldm):
  """``--mode=sample`` writes images (8x8x1, not the 4x4x2 latents) that are the first
  stage's decoder applied to the sampler's latents (same key, un-normalised)."""
  config = ldm["config"]
  out = os.path.join(ldm["workdir"], "samples", "step_4")
  images = np.load(os.path.join(out, "samples.npz"))["samples"]
  assert images.shape == (16, 8, 8, 1) and np.all(np.isfinite(images))
  assert os.path.getsize(os.path.join(out, "samples.png")) > 0
  assert ldm["info"]["nfe"] == 6.0  # 5 Euler-Maruyama steps + the denoising step

  method = methods.build_method(config, data.dataset_info(config.data))
  assert method.shape == (4, 4, 2)
  state = ldm["state"]
  # train.generate_samples' key for the first (only) chunk.
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 2_000_003), 0)
  latents, _ = jax.jit(method.sample_latents, static_argnums=3)(
      state.ema_params, state.model_state, rng, 16)
  module, ae_params, shift, scale = encode_latents.load_first_stage(ldm["ae_dir"], config)
  decoded = jax.jit(lambda z: module.apply({"params": ae_params}, z * scale + shift,
                                           method=module.decode))(latents)
  assert latents.shape == (16, 4, 4, 2)
  np.testing.assert_allclose(images, np.asarray(decoded), rtol=0, atol=1e-6)
  assert float(np.abs(images - images[:1]).max()) > 1e-3  # distinct samples
  # The shift/scale that un-normalise are the stored latents' (latent VAE appendix B).
  stored = data.dataset_info(config.data)
  np.testing.assert_array_equal(shift, np.asarray(stored.shift, np.float32))


def test_latent_bits_per_dim_is_per_latent_dimension(ldm):
  """With the exact score of N(0, I) latents (under VP the marginals stay N(0, I), score
  -x), the ODE likelihood is the Gaussian's; the reported number is nats / (32 ln 2) for
  4x4x2 latents, and no image bits/dim is reported."""
  config = ldm["config"]
  method = methods.build_method(config, data.dataset_info(config.data))
  x = next(data.make_eval_iterator(config.data, global_batch_size=4))["x"]
  terms = jax.jit(lambda x: method.likelihood_terms(lambda u, t: -u, x,
                                                    jax.random.PRNGKey(0)))(jnp.asarray(x))
  assert "bits_per_dim" not in terms
  expected = -np.asarray(gaussian_logp(jnp.asarray(x), 0.0, 1.0))
  np.testing.assert_allclose(terms["nll_nats"], expected, rtol=2e-3)
  np.testing.assert_allclose(terms["latent_bits_per_dim"],
                             np.asarray(terms["nll_nats"]) / (32 * math.log(2.0)), rtol=1e-6)


def test_shape_mismatch_and_paper_size_network():
  config = load_config("ldm_digits")
  config.ldm.latent_shape = (4, 4, 3)
  method = methods.build_method(config, data.dataset_info(config.data))
  batch = {"x": jnp.zeros((2, 8, 8, 1))}
  with pytest.raises(ValueError, match="--config.data.name=latents"):
    jax.eval_shape(lambda p: method.loss(p, {}, batch, jax.random.PRNGKey(0), 0),
                   jax.eval_shape(method.init_params, jax.random.PRNGKey(0))[0])
  # ImageNet-256: the DDPM U-Net at the widths of LDM's f = 8 ImageNet model on 32x32x4.
  config = load_config("ldm_imagenet256")
  method = methods.build_method(config, data.dataset_info(config.data))
  params, _ = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == 246_701_572
  assert method.shape == (32, 32, 4) and method.model.out_channels == 4
