"""Importing ericl122333/latent-vae-jax files (issue 12, format ``latent_vae_jax``).

* Golden: ``tests/fixtures/latent_vae_jax_small_checkpoint_3`` (the flax msgpack of the
  reference's ``EMATrainState``) and ``latent_vae_jax_small_ema.p`` (the released-weights
  pickle of ``{"ema_params": FrozenDict}``) hold a tiny class-conditional model built by
  the reference's own ``model.VAE`` (seeded, every weight redrawn);
  ``latent_vae_jax_small_outputs.npz`` holds its outputs on fixed inputs with this
  project's posterior noise (README in tests/fixtures). Imported, ``models.hvae`` must
  reproduce them.
* Paper size: the reference's parameter / singular-vector layouts of config/church.py,
  bedroom.py and imagenet256_kl8.py must fill ``jax.eval_shape`` of this project's
  Table 5 presets leaf for leaf.
* Bad input: a config of another architecture, a truncated file, a foreign pickle: one
  line each.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, methods
from lsgm_jax.checkpoint_import import ImportMismatchError, driver, latent_vae_jax
from lsgm_jax.models import hvae, hvae_losses
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError
from tests.helpers import REPO, load_config
from tests.helpers import CHEAP_COMPILER_OPTIONS

FIXTURES = os.path.join(REPO, "tests", "fixtures")
MSGPACK = os.path.join(FIXTURES, "latent_vae_jax_small_checkpoint_3")
PICKLE = os.path.join(FIXTURES, "latent_vae_jax_small_ema.p")


def _small_config(**changes):
  """configs/latent_vae_digits.py shrunk to the fixture's model (model.VAE with c 4,
  c_mult 1,2,2, dff_mult 2,0,1, nlayers 2,1,2, one encoder block per level, attention
  1,0,1 with one head, zdim 4, 10 classes, h_prior)."""
  config = load_config("latent_vae_digits")
  with config.unlocked():
    lv = config.latent_vae
    lv.preset, lv.latent_shape = "", (8, 8, 4)
    lv.channels = lv.enc_channels = 4
    lv.channel_mult, lv.ffn_ratio, lv.num_groups = (1, 2, 2), (2, 0, 1), (2, 1, 2)
    lv.enc_layers, lv.num_attention, lv.attention_heads = (1, 1, 1), (1, 0, 1), (1, 1, 1)
    lv.z_channels, lv.class_conditional, lv.remat_min_resolution = 4, True, 0
    config.training.ema_decay = 0.9999
    for key, value in changes.items():
      setattr(lv, key, value)
  return config


@pytest.fixture(scope="module")
def small():
  config = _small_config()
  method = methods.build_method(config, data.dataset_info(config.data))
  target = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  return config, method, target


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(FIXTURES, "latent_vae_jax_small_outputs.npz")))


_CHEAP = CHEAP_COMPILER_OPTIONS


def _apply_fn(method, golden):
  """The posterior pass (fixed inputs, this project's noise), compiled once with XLA's
  cheap CPU settings."""
  img, label = jnp.asarray(golden["img"]), jnp.asarray(golden["label"])

  def fn(params, model_state):
    out, new_state = method.model.apply(
        {"params": params, **model_state}, img, label, drop_labels=False,
        rngs={hvae.SAMPLE_RNG: jax.random.PRNGKey(0)}, mutable=[hvae.SPECTRAL_COLLECTION])
    recon = hvae_losses.reconstruction_kl(img, out.mean, out.logvar, 0.07)
    return {"mean": out.mean, "logvar": out.logvar, "kl": out.kl,
            "spectral": out.spectral, "recon": recon}, new_state

  params, state = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
  compiled = jax.jit(fn).lower(params, state).compile(compiler_options=_CHEAP)

  def run(p, s):
    out, new_state = compiled(p, s)
    return {k: np.asarray(v) for k, v in out.items()}, new_state
  return run


@pytest.fixture(scope="module")
def reference_pass(small, golden):
  return _apply_fn(small[1], golden)


def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_training_checkpoint_matches_reference(small, golden, reference_pass):
  """msgpack EMATrainState: raw and EMA weights reproduce model.VAE's mean, log-variance,
  per-layer KL, spectral penalty and reconstruction KL to 1e-5 relative; the spectral
  power iteration moves u as the reference's ``ConvSR`` does; Adam moments and step map."""
  config, method, target = small
  imported = driver.read_checkpoint(MSGPACK, "latent_vae_jax", config, target)
  assert imported.step == 3
  assert "Adam moments (count 3)" in imported.description
  for which, params in (("raw", imported.params), ("ema", imported.ema_params)):
    ours, new_state = reference_pass(params, imported.model_state)
    for key in ("mean", "logvar", "kl", "spectral", "recon"):
      assert _rel(ours[key], golden[f"{which}_{key}"]) < 1e-5, (which, key)
    if which == "raw":
      u = new_state[hvae.SPECTRAL_COLLECTION]["decoder_0"]["layers_0"]["posterior"]["out"]["u"]
      np.testing.assert_allclose(np.asarray(u), golden["sv_after_0"].reshape(-1), atol=1e-5)
  adam = imported.opt_state[0]
  assert int(adam.count) == 3
  state = latent_vae_jax.read_file(MSGPACK)[0]
  mu_ref = np.asarray(state["opt_state"]["0"]["mu"]["outproj"]["kernel"], np.float32)
  np.testing.assert_array_equal(adam.mu["out_proj"]["kernel"], mu_ref)
  assert int(imported.opt_state[1].count) == 3
  ts = driver.build_state(imported, target, method, jax.random.PRNGKey(0))
  assert int(ts.step) == 3 and ts.opt_state[0].mu["out_proj"]["kernel"].dtype == jnp.float32


def test_released_pickle_holds_ema_only(small, golden, reference_pass):
  """The ``{"ema_params": FrozenDict}`` pickle: the EMA becomes params; spectral vectors
  (not in the file) are the exact top singular vectors, a fixed point of the power
  iteration; the outputs equal the reference's EMA outputs (penalty aside, which
  depends on the stored vectors)."""
  config, method, target = small
  imported = driver.read_checkpoint(PICKLE, "latent_vae_jax", config, target)
  assert imported.step == 0 and imported.ema_params is None and imported.opt_state is None
  ours, new_state = reference_pass(imported.params, imported.model_state)
  for key in ("mean", "logvar", "kl", "recon"):
    assert _rel(ours[key], golden[f"ema_{key}"]) < 1e-5, key
  u0 = imported.model_state[hvae.SPECTRAL_COLLECTION]["decoder_2"]["layers_1"]["prior"]["out"]["u"]
  u1 = new_state[hvae.SPECTRAL_COLLECTION]["decoder_2"]["layers_1"]["prior"]["out"]["u"]
  np.testing.assert_allclose(np.asarray(u1), u0, atol=1e-5)
  kernel = imported.params["decoder_2"]["layers_1"]["prior"]["out"]["kernel"]
  w = np.asarray(kernel).reshape(-1, u0.shape[0])
  np.testing.assert_allclose(np.linalg.norm(w @ u0), np.linalg.svd(w)[1][0], rtol=1e-5)


def _layout_tree(leaves: dict[str, list[int]], collection: str) -> dict:
  tree: dict = {}
  for key, shape in leaves.items():
    col, *path = key.split("/")
    if col != collection:
      continue
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.broadcast_to(np.zeros((), np.float32), shape)
  return tree


@pytest.mark.parametrize("name,variant", [("church", "latent_vae_church"),
                                          ("bedroom", "latent_vae_bedroom"),
                                          ("imagenet256_kl8", "latent_vae_imagenet256")])
def test_paper_layouts_map_completely(name, variant):
  """The reference's own parameter and singular-vector trees of its three configs (keys
  and shapes from ``model.VAE.init``) fill this project's presets exactly, with the
  trainable counts of REFERENCE_NOTES (119,137,672 / 96,241,478 / 386,366,344)."""
  with gzip.open(os.path.join(FIXTURES, "latent_vae_jax_paper_layouts.json.gz"), "rt") as f:
    layout = json.load(f)[name]
  config = load_config(variant)
  method = methods.build_method(config, data.dataset_info(config.data))
  params_t, state_t = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
  cfg = method.hvae_config
  params = latent_vae_jax.convert_params(_layout_tree(layout["leaves"], "params"), cfg,
                                         params_t, name)
  state = latent_vae_jax.convert_vectors(
      _layout_tree(layout["leaves"], "singular_vectors"), cfg, state_t, name)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == layout["trainable"]
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(state_t))


def test_mismatched_config_is_one_line(small):
  """Another z width: one line naming the mis-shaped leaves; nothing else raised."""
  config = _small_config(z_channels=8)
  method = methods.build_method(config, data.dataset_info(config.data))
  target = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  with pytest.raises(ImportMismatchError, match=r"mis-shaped") as info:
    driver.read_checkpoint(MSGPACK, "latent_vae_jax", config, target)
  assert "\n" not in str(info.value)
  sgm = load_config("sgm_toy", "smoke")
  with pytest.raises(ImportMismatchError, match="method='latent_vae'"):
    latent_vae_jax.convert(MSGPACK, sgm, target)


def test_truncated_and_foreign_files_are_one_line(small, tmp_path):
  """Truncated msgpack / pickle and a pickle of a foreign object: one line each; a pickle
  of jax arrays (saved without ``device_get``) reads as NumPy."""
  config, _, target = small
  with open(MSGPACK, "rb") as f:
    raw = f.read()
  cut = tmp_path / "checkpoint_3"
  cut.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(CheckpointFormatError) as info:
    driver.read_checkpoint(str(cut), "latent_vae_jax", config, target)
  assert "\n" not in str(info.value)
  with open(PICKLE, "rb") as f:
    raw = f.read()
  cut.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(CheckpointFormatError) as info:
    driver.read_checkpoint(str(cut), "latent_vae_jax", config, target)
  assert "\n" not in str(info.value)
  as_jax = tmp_path / "device_arrays.p"  # pickled without device_get: jax arrays
  state = latent_vae_jax.read_file(PICKLE)[0]
  as_jax.write_bytes(pickle.dumps(jax.tree.map(jnp.asarray, state)))
  imported = driver.read_checkpoint(str(as_jax), "latent_vae_jax", config, target)
  np.testing.assert_array_equal(imported.params["out_proj"]["kernel"],
                                state["ema_params"]["outproj"]["kernel"])
  foreign = tmp_path / "foreign.p"
  foreign.write_bytes(pickle.dumps({"params": os.getcwd}))  # a function: refused
  with pytest.raises(CheckpointFormatError, match="latent-vae-jax params pickle"):
    driver.read_checkpoint(str(foreign), "latent_vae_jax", config, target)


def test_import_mode_writes_the_checkpoint(tmp_path):
  """``--mode=import`` end to end: the converted state is written at the file's step."""
  config = _small_config()
  with config.unlocked():
    config.checkpoint.import_path, config.checkpoint.import_format = MSGPACK, "latent_vae_jax"
    config.checkpoint.async_save = False
  result = driver.import_checkpoint(config, str(tmp_path))
  assert result["step"] == 3 and driver.existing_steps(str(tmp_path)) == ["3"]
