"""Importing the ScoreVAE paper code's Lightning checkpoints (issue 12, format ``score_vae``).

* Golden: ``tests/fixtures/score_vae_encoder_small.ckpt`` (the encoder stage's file:
  ``encoder.*`` = a tiny ``time_dependent_simple_encoder``, ``unconditional_score_model.*``
  = a tiny ``models/ddpm.py`` U-Net, the ``EMAOptimizer`` state with Adam moments and the
  EMA list) and ``score_vae_prior_small.ckpt`` (the prior stage's ``score_model.*`` file)
  were written from the paper code's own modules (README in tests/fixtures);
  ``score_vae_small_outputs.npz`` holds their outputs on fixed inputs. Imported, this
  project's ``SimpleEncoder`` and ``UNet`` must reproduce them.
* Paper size: the paper code's state-dict keys and shapes of the CIFAR-10 encoder stage
  (simple encoder + DDPM prior) and of the CelebA-64 DDPM encoder and prior map onto
  ``jax.eval_shape`` of configs/score_vae_cifar10.py / score_vae_celeba64.py exactly.
* Bad input: a config of another architecture / stage, a truncated file: one line each.
"""

from __future__ import annotations

import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, methods
from lsgm_jax.checkpoint_import import ImportMismatchError, driver, score_vae
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError
from lsgm_jax.models.scan_layout import scanned_layout, unrolled_layout
from tests.helpers import REPO, load_config

FIXTURES = os.path.join(REPO, "tests", "fixtures")
ENCODER_FILE = os.path.join(FIXTURES, "score_vae_encoder_small.ckpt")
PRIOR_FILE = os.path.join(FIXTURES, "score_vae_prior_small.ckpt")
DDPM_ENCODER_FILE = os.path.join(FIXTURES, "score_vae_ddpm_encoder_small.ckpt")


def _config(stage: str, **model):
  """configs/score_vae_cifar10.py shrunk to the fixtures: simple encoder c_hid 4, latent
  8; DDPM prior nf 4, ch_mult 1,1, one block per level, attention at 16."""
  config = load_config("score_vae_cifar10", stage)
  with config.unlocked():
    config.score_vae.encoder.nf, config.score_vae.latent_dim = 4, 8
    config.model.nf, config.model.ch_mult = 4, (1, 1)
    config.model.num_res_blocks, config.model.attn_resolutions = 1, (16,)
    for key, value in model.items():
      setattr(config.model, key, value)
  return config


def _setup(config):
  method = methods.build_method(config, data.dataset_info(config.data))
  return method, jax.eval_shape(method.init_state, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def golden():
  return {k: jnp.asarray(v) for k, v in np.load(
      os.path.join(FIXTURES, "score_vae_small_outputs.npz")).items()}


def _close(ours, ref, rtol=1e-5):
  ref = np.asarray(ref)
  assert float(np.max(np.abs(np.asarray(ours) - ref))) <= rtol * float(np.max(np.abs(ref)))


def _unet(method, params, golden, key):
  """The DDPM U-Net on the fixture's [0, 1] images: the reference's ``DDPM(x, 999 t)``
  centres them itself (``data.centered=False``); ``UNet`` sees 2x - 1 and scales t."""
  out = jax.jit(lambda p: method.prior.model.apply({"params": p}, 2 * golden["x"] - 1,
                                                   golden["t"]))(params)
  _close(out, golden[key])


def test_encoder_stage_file_matches_reference(golden):
  """Encoder-stage file: the encoder (raw and EMA) gives the paper code's (mean,
  log-variance) for raw t, the frozen prior its U-Net output; Adam moments and the
  step carry over."""
  config = _config("encoder")
  method, target = _setup(config)
  imported = driver.read_checkpoint(ENCODER_FILE, "score_vae", config, target)
  assert imported.step == 7
  assert "EMA -> ema_params" in imported.description
  assert "Adam moments (step 2)" in imported.description
  for which, params in (("raw", imported.params), ("ema", imported.ema_params)):
    mean, logvar = method.encode_fn(params["encoder"])(golden["x"], golden["t"])
    _close(mean, golden[f"enc_mean_{which}"])
    _close(logvar, golden[f"enc_logvar_{which}"])
  _unet(method, imported.model_state["prior"]["params"], golden, "prior_out")
  adam = [s for s in jax.tree.leaves(imported.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
          if hasattr(s, "mu")][0]
  assert int(adam.count) == 2
  assert float(jnp.max(jnp.abs(adam.nu["encoder"]["linear"]["kernel"]))) > 0
  state = driver.build_state(imported, target, method, jax.random.PRNGKey(0))
  assert int(state.step) == 7


def test_prior_files_match_reference(golden):
  """Prior-stage file (``score_model.*``): raw and EMA U-Net outputs; an encoder-stage
  file also fills a prior config with its frozen (raw) prior and no EMA."""
  config = _config("prior")
  method, target = _setup(config)
  imported = driver.read_checkpoint(PRIOR_FILE, "score_vae", config, target)
  assert imported.step == 11 and "Adam moments (step 1)" in imported.description
  _unet(method, imported.params["prior"], golden, "prior2_out_raw")
  _unet(method, imported.ema_params["prior"], golden, "prior2_out_ema")
  frozen = driver.read_checkpoint(ENCODER_FILE, "score_vae", config, target)
  assert frozen.ema_params is None and frozen.opt_state is None
  _unet(method, frozen.params["prior"], golden, "prior_out")


def test_ddpm_encoder_file_matches_reference(golden):
  """Encoder-stage file with ``time_dependent_DDPM_encoder`` (nf 4, ch_mult 1,1,1, shared
  with its prior): (mean, log-variance) of the raw and EMA encoder; the file was saved
  before the first Adam step, so the optimizer state is fresh."""
  config = _config("encoder", ch_mult=(1, 1, 1))
  with config.unlocked():
    enc = config.score_vae.encoder
    enc.name, enc.nf, enc.ch_mult, enc.num_res_blocks = "ddpm", 4, (1, 1, 1), 1
    enc.attn_resolutions, enc.dropout = (16,), 0.1
  method, target = _setup(config)
  imported = driver.read_checkpoint(DDPM_ENCODER_FILE, "score_vae", config, target)
  assert imported.step == 3 and imported.opt_state is None
  for which, params in (("raw", imported.params), ("ema", imported.ema_params)):
    mean, logvar = method.encode_fn(params["encoder"])(golden["x"], golden["t"])
    _close(mean, golden[f"ddpm_enc_mean_{which}"])
    _close(logvar, golden[f"ddpm_enc_logvar_{which}"])


def _layout_dict(keys):
  return {k: np.broadcast_to(np.zeros((), np.float32), shape) for k, shape in keys}


@pytest.mark.parametrize("name,config_name", [("cifar10", "score_vae_cifar10"),
                                               ("celeba64", "score_vae_celeba64")])
def test_paper_layouts_map_completely(name, config_name):
  """The paper code's own encoder-stage state dicts (keys and shapes of CIFAR-10's simple
  encoder + DDPM prior, CelebA-64's DDPM encoder + prior) fill the paper configs'
  abstract states; trainable counts as REFERENCE_NOTES (57,633,027 + 1,982,144;
  51,912,195 + 26,722,944)."""
  with gzip.open(os.path.join(FIXTURES, "score_vae_paper_layouts.json.gz"), "rt") as f:
    layout = json.load(f)[name]
  config = load_config(config_name, "encoder")
  method = methods.build_method(config, data.dataset_info(config.data))
  params_t, state_t = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
  sd = _layout_dict(layout["keys"])
  # pylint: disable=protected-access
  mapper = score_vae._Mapper(config)
  encoder = mapper.encoder(score_vae._sub(sd, score_vae.ENCODER), params_t["encoder"], name)
  # The mapper fills the unrolled U-Net (the reference's layout); in_target_layout then
  # stacks the scanned runs of the config's model (model.scan_blocks).
  prior_t = state_t["prior"]["params"]
  prior = mapper.prior(score_vae._sub(sd, score_vae.PRIOR), unrolled_layout(prior_t), name)
  prior = scanned_layout(prior, prior_t)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  assert (count(prior), count(encoder)) == (layout["prior"], layout["encoder"])
  assert any("_scan_" in k for k in prior)


def test_mismatches_are_one_line(tmp_path):
  """Another prior width, another SDE than the file's stored config, the wrong method /
  stage, a truncated file: one line each."""
  config = _config("encoder", nf=8)
  _, target = _setup(config)
  with pytest.raises(ImportMismatchError, match="mis-shaped") as info:
    driver.read_checkpoint(ENCODER_FILE, "score_vae", config, target)
  assert "\n" not in str(info.value)
  config = _config("encoder")
  with config.unlocked():
    config.sde.beta_max = 10.0  # no tensor shows it; the file's stored config does
  _, target = _setup(config)
  with pytest.raises(ImportMismatchError, match=r"model.beta_max=20.0 \(--config.sde"):
    driver.read_checkpoint(ENCODER_FILE, "score_vae", config, target)
  config = _config("encoder")
  _, target = _setup(config)
  with pytest.raises(ImportMismatchError, match="no encoder and frozen prior"):
    driver.read_checkpoint(PRIOR_FILE, "score_vae", config, target)
  with pytest.raises(ImportMismatchError, match="stage"):
    score_vae.check_config(load_config("score_vae_cifar10", "beta_vae"))
  with pytest.raises(ImportMismatchError, match="method='score_vae'"):
    score_vae.check_config(load_config("sgm_toy", "smoke"))
  with open(ENCODER_FILE, "rb") as f:
    raw = f.read()
  cut = tmp_path / "last.ckpt"
  cut.write_bytes(raw[: len(raw) // 3])
  with pytest.raises(CheckpointFormatError) as info:
    driver.read_checkpoint(str(cut), "score_vae", config, target)
  assert "\n" not in str(info.value)


def test_import_mode_writes_the_encoder_stage(tmp_path):
  """``--mode=import`` end to end: the converted state is written at the file's step."""
  config = _config("encoder")
  with config.unlocked():
    config.checkpoint.import_path, config.checkpoint.import_format = ENCODER_FILE, "score_vae"
    config.checkpoint.async_save = False
  result = driver.import_checkpoint(config, str(tmp_path))
  assert result["step"] == 7 and driver.existing_steps(str(tmp_path)) == ["7"]
