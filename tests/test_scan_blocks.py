"""Scanned residual blocks (``scan_blocks``): same function, same parameter count, a
converter between the two parameter layouts, and the penalties that read parameters.

A tiny NCSN++ whose levels have scannable runs at the start (down path, with attention),
in the middle and at the end of the up path; paper models are only traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.models import nvae
from lsgm_jax.models.ncsnpp import NCSNpp, to_scanned_params, to_unrolled_params
from lsgm_jax.objectives import spectral_regularization
from lsgm_jax.presets.ncsnpp import cld_cifar10_config

# Runs: down_0_scan_0 (2 blocks + attention), down_1 block 0 (16 -> 32) then block 1
# alone; up_1_scan_0 (blocks 0-1) then block 2 (skip from the 16-channel resample);
# up_0 block 0 (h has 32 channels) then up_0_scan_1 (blocks 1-2).
_CFG = dict(nf=16, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.1,
            in_channels=6, out_channels=3, init_scale=1.0)
_X = np.random.RandomState(0).standard_normal((2, 8, 8, 6))
_T = np.array([0.05, 0.9])


def _random_params(model: NCSNpp, dtype=jnp.float32):
  """The model's parameter tree filled from NumPy (an init would compile for long)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _X, _T))["params"]
  rs = np.random.RandomState(1)
  return jax.tree.map(lambda s: jnp.asarray(rs.standard_normal(s.shape) * 0.3, dtype),
                      shapes)


@pytest.fixture(scope="module")
def params():
  return _random_params(NCSNpp(**_CFG, scan_blocks=True))


def test_layout_has_the_expected_runs(params):
  runs = {k: jax.tree.leaves(v)[0].shape[0] for k, v in params.items() if "_scan_" in k}
  assert runs == {"down_0_scan_0": 2, "up_1_scan_0": 2, "up_0_scan_1": 2}
  assert set(params["down_0_scan_0"]) == {"block", "attn"}
  assert {"down_1_block_0", "down_1_block_1", "up_1_block_2", "up_0_block_0"} <= set(params)


def test_scanned_equals_unrolled_with_converted_params(params):
  # float64, so that the comparison sees the function and not float32 rounding (in
  # float32 the two compiled programs differ by ~2e-6 on outputs of size ~1: XLA fuses
  # and orders the sums of a scanned body differently).
  with jax.enable_x64(True):
    x, t = jnp.asarray(_X), jnp.asarray(_T)
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    flat = to_unrolled_params(p64)
    outs = []
    for scan, p in ((True, p64), (False, flat)):
      model = NCSNpp(**_CFG, scan_blocks=scan, dtype=jnp.float64)
      if not scan:
        names = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), x, t))["params"]
        assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(names)
      outs.append(np.asarray(jax.jit(model.apply)({"params": p}, x, t)))
  assert np.abs(outs[0]).mean() > 0.1  # every block contributes
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6, rtol=0)
  # ... and back: exactly the same arrays.
  back = to_scanned_params(to_unrolled_params(params), like=params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               back, params)


def test_converter_rejects_wrong_trees(params):
  flat = to_unrolled_params(params)
  with pytest.raises(ValueError, match="up_0_block_2"):
    to_scanned_params({k: v for k, v in flat.items() if k != "up_0_block_2"}, like=params)
  with pytest.raises(ValueError, match="stray"):
    to_scanned_params(dict(flat, stray={"w": jnp.zeros(1)}), like=params)
  bad = dict(flat, conv_in={"kernel": jnp.zeros((3, 3, 6, 8)), "bias": jnp.zeros(8)})
  with pytest.raises(ValueError, match="conv_in"):
    to_scanned_params(bad, like=params)


def test_paper_model_parameter_count_unchanged_by_scanning():
  x, t = jnp.zeros((1, 32, 32, 6)), jnp.ones((1,))
  counts = {}
  for scan in (True, False):
    model = NCSNpp(**cld_cifar10_config(scan_blocks=scan))
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), x, t))["params"]
    counts[scan] = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    if scan:
      runs = {k: jax.tree.leaves(v)[0].shape[0] for k, v in shapes.items() if "_scan_" in k}
      singles = sorted(k for k in shapes if k.startswith(("down_", "up_")) and "_block_" in k)
  assert counts[True] == counts[False] == 107_593_859
  # 8 blocks per level down, 9 up: 68 blocks in 8 scanned runs and 3 single blocks
  # (those whose input width differs from their neighbours').
  assert runs == {"down_0_scan_0": 8, "down_1_scan_1": 7, "down_2_scan_0": 8,
                  "down_3_scan_0": 8, "up_3_scan_0": 9, "up_2_scan_0": 9, "up_1_scan_0": 8,
                  "up_0_scan_1": 8}
  assert singles == ["down_1_block_0", "up_0_block_0", "up_1_block_8"]


def test_penalties_read_stacked_parameters_per_block():
  # LSGM's score-model regularisers: sum over layers of max |GroupNorm scale| and of
  # sigma_max(W) per convolution; a stacked run must count as its separate layers.
  rs = np.random.RandomState(2)
  stacked = {"conv_in": {"kernel": jnp.asarray(rs.standard_normal((3, 3, 2, 4)))},
             "down_0_scan_0": {"block": {
                 "conv_0": {"kernel": jnp.asarray(rs.standard_normal((3, 3, 3, 4, 5)))},
                 "norm_0": {"scale": jnp.asarray(rs.standard_normal((3, 4)))}}}}
  flat = to_unrolled_params(stacked)
  assert sorted(flat) == ["conv_in", "down_0_block_0", "down_0_block_1", "down_0_block_2"]
  bn = [float(nvae.batchnorm_penalty(p)) for p in (stacked, flat)]
  want = sum(np.abs(np.asarray(stacked["down_0_scan_0"]["block"]["norm_0"]["scale"])).max(-1))
  np.testing.assert_allclose(bn, [want, want], rtol=1e-6)
  sigma = sum(np.linalg.svd(np.asarray(w).reshape(-1, w.shape[-1]), compute_uv=False)[0]
              for w in [stacked["conv_in"]["kernel"],
                        *stacked["down_0_scan_0"]["block"]["conv_0"]["kernel"]])
  # The unrolled layout is tests/test_lsgm_method.py's case; here the stacked one.
  vectors = spectral_regularization.init_power_vectors(stacked, jax.random.PRNGKey(1), 100)
  assert vectors["['down_0_scan_0']['block']['conv_0']['kernel']"]["u"].shape == (3, 5)
  total, new = spectral_regularization.spectral_penalty(stacked, vectors, 1)
  np.testing.assert_allclose(float(total), sigma, rtol=1e-4)
  assert new.keys() == vectors.keys()


def test_checkpoint_of_the_other_layout_names_the_switch(params):
  from lsgm_jax import checkpoint

  def fingerprint(p):
    leaves = jax.tree_util.tree_flatten_with_path(p)[0]
    return {"method": "sgm", "num_params": sum(int(np.prod(x.shape)) for _, x in leaves),
            "param_shapes": {jax.tree_util.keystr(k): list(x.shape) for k, x in leaves}}

  scanned, unrolled = fingerprint(params), fingerprint(to_unrolled_params(params))
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match="--config.model.scan_blocks=False"):
    checkpoint.check_fingerprint(unrolled, scanned, "w")  # saved unrolled, now scanned
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match="--config.model.scan_blocks=True"):
    checkpoint.check_fingerprint(scanned, unrolled, "w")


def test_variant_traces_with_the_same_parameter_count():
  # remat inside the scanned body, DDPM blocks, an input pyramid merged by concatenation;
  # init with train=True so that the dropout keys are split through the scan too.
  overrides = dict(remat=True, resblock_type="ddpm", fir=False, progressive="residual",
                   progressive_input="input_skip", progressive_combine="cat")
  counts = []
  for scan in (True, False):
    model = NCSNpp(**dict(_CFG, **overrides), scan_blocks=scan)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    variables = jax.eval_shape(lambda m=model: m.init(rngs, _X, _T, train=True))
    counts.append(sum(int(np.prod(s.shape)) for s in jax.tree.leaves(variables)))
    assert any("_scan_" in k for k in variables["params"]) == scan
  assert counts[0] == counts[1]


def test_tree_layouts_round_trip_params_moments_and_spectral_vectors(params):
  # What the checkpoint import converts: any tree holding NCSN++ parameter levels (an
  # LSGM {"vae", "score"} split, Adam's moments in an optax state) and the spectral
  # regulariser's power vectors keyed by kernel path.
  from lsgm_jax.models.ncsnpp import scanned_layout, unrolled_layout
  import optax
  params = jax.tree.map(np.asarray, params)  # host arrays, as the importers hold them
  flat = to_unrolled_params(params)
  key = jax.random.PRNGKey(3)
  # Power vectors of two levels only (each kernel's iteration compiles on its own).
  sub = {k: params[k] for k in ("conv_in", "down_0_scan_0")}
  vectors_flat = jax.tree.map(np.asarray, jax.jit(
      lambda p: spectral_regularization.init_power_vectors(p, key, 2))(
          to_unrolled_params(sub)))
  like_vectors = jax.eval_shape(
      lambda: spectral_regularization.init_power_vectors(sub, key, 2))
  like = {"params": {"vae": {"w": np.zeros(2)}, "score": params},
          "opt": optax.ScaleByAdamState(count=np.zeros((), np.int32), mu=params,
                                        nu=params),
          "model_state": {"score_sr": like_vectors}}
  unrolled = {"params": {"vae": {"w": np.zeros(2)}, "score": flat},
              "opt": optax.ScaleByAdamState(count=np.zeros((), np.int32), mu=flat,
                                            nu=flat),
              "model_state": {"score_sr": vectors_flat}}
  assert jax.tree_util.tree_structure(unrolled_layout(jax.eval_shape(lambda: like))) == \
      jax.tree_util.tree_structure(unrolled)
  scanned = scanned_layout(unrolled, like)
  assert jax.tree_util.tree_structure(scanned) == jax.tree_util.tree_structure(
      jax.eval_shape(lambda: like))
  eq = lambda a, b: jax.tree.map(
      lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  eq(scanned["params"]["score"], params)
  eq(scanned["opt"].nu, params)
  eq(unrolled_layout(scanned), unrolled)
  # The stacked vectors give the unrolled network's penalty (one sigma per block).
  sr = scanned["model_state"]["score_sr"]
  assert sr["['down_0_scan_0']['block']['conv_0']['kernel']"]["u"].shape[0] == 2
  penalty = jax.jit(lambda p, v: spectral_regularization.spectral_penalty(p, v, 1)[0])
  totals = [float(penalty(p, v)) for p, v in ((sub, sr),
                                               (to_unrolled_params(sub), vectors_flat))]
  np.testing.assert_allclose(totals[0], totals[1], rtol=1e-5)
  assert scanned_layout(unrolled, jax.eval_shape(lambda: unrolled)) is unrolled


@pytest.mark.parametrize("with_fingerprint", [True, False])
def test_restore_newest_refuses_an_unrolled_checkpoint_without_moving_it_aside(
    params, tmp_path, with_fingerprint):
  # A checkpoint written before scan_blocks (unrolled layout) under the scanned default:
  # one line naming the flag, and the checkpoint stays where it is (not "damaged").
  import os
  import types
  from lsgm_jax import checkpoint
  from lsgm_jax.config_defaults import get_default_config
  from lsgm_jax.methods.base import Method
  ckpt_config = get_default_config().checkpoint
  ckpt_config.async_save = False
  sgm = types.SimpleNamespace(config=types.SimpleNamespace(method="sgm"))
  fingerprint = lambda p: Method.fingerprint(sgm, p)  # what Experiment stores
  flat = to_unrolled_params(params)
  saver = checkpoint.Checkpointer(str(tmp_path), ckpt_config)
  saver.save(5, {"params": flat}, {"fingerprint": fingerprint(flat) if with_fingerprint
                                   else {}})
  saver.close()
  loader = checkpoint.Checkpointer(str(tmp_path), ckpt_config)
  abstract = jax.eval_shape(lambda: {"params": params})
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"--config\.model\.scan_blocks=False") as info:
    loader.restore_newest(abstract, fingerprint(params))
  loader.close()
  assert "\n" not in str(info.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]


# ----------------------------------------------------------------------- DDPM U-Net

# ch_mult (1, 2, 2), 3 blocks per level, attention at 8: runs on every level of the way
# down (level 1 after its widening block, with attention) and up (all 4 blocks of level
# 2; level 1 before the block whose skip comes from the 16-channel resample; level 0
# after its first block, whose h is wider).
_UNET = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=3, attn_resolutions=(8,))
_UX = np.random.RandomState(3).standard_normal((2, 16, 16, 3))


def _unet_shapes(scan: bool, **overrides):
  from lsgm_jax.models.unet import UNet
  model = UNet(**dict(_UNET, **overrides), scan_blocks=scan)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _UX, _T))["params"]


def test_unet_unrolled_names_are_the_importers_layout_and_runs_cover_them():
  # The unrolled U-Net keeps flax's automatic names (checkpoints written before
  # scan_blocks restore with --config.model.scan_blocks=False, and the ScoreVAE importer
  # replays them in ddpm_layout); a scanned run unrolls to exactly those names.
  from lsgm_jax.checkpoint_import.score_vae import ddpm_layout
  flat = _unet_shapes(False)
  layout = {name for name, _ in ddpm_layout((1, 2, 2), 3, (8,), 16)}
  assert set(flat) == layout
  scanned = _unet_shapes(True)
  runs = {k: jax.tree.leaves(v)[0].shape[0] for k, v in scanned.items() if "_scan_" in k}
  assert runs == {"unet_scan_0_0": 3, "unet_scan_4_1": 2, "unet_scan_6_3": 3,
                  "unet_scan_11_4": 4, "unet_scan_15_4": 3, "unet_scan_20_5": 3}
  assert set(scanned["unet_scan_4_1"]) == {"block", "attn"}  # level 1 runs at 8x8
  unrolled = jax.eval_shape(to_unrolled_params, scanned)
  assert jax.tree_util.tree_structure(unrolled) == jax.tree_util.tree_structure(flat)
  jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or pytest.fail(
      f"{a} != {b}"), unrolled, flat)


@pytest.mark.parametrize("every_up", [False, True])
def test_unet_scanned_equals_unrolled_with_converted_params(every_up):
  from lsgm_jax.models.unet import UNet
  rs = np.random.RandomState(4)
  with jax.enable_x64(True):
    flat = jax.tree.map(lambda s: jnp.asarray(rs.standard_normal(s.shape) * 0.3),
                        _unet_shapes(False, attn_every_up_block=every_up))
    scanned = to_scanned_params(flat, like=_unet_shapes(True, attn_every_up_block=every_up))
    x, t = jnp.asarray(_UX), jnp.asarray(_T)
    outs = [np.asarray(jax.jit(UNet(**_UNET, attn_every_up_block=every_up, scan_blocks=s,
                                    dtype=jnp.float64).apply)({"params": p}, x, t))
            for s, p in ((True, scanned), (False, flat))]
  assert np.abs(outs[0]).mean() > 0.1
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6, rtol=0)
  back = to_scanned_params(to_unrolled_params(scanned), like=scanned)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               back, scanned)


def test_unet_paper_prior_parameter_count_unchanged_by_scanning():
  # ScoreVAE's CIFAR-10 prior (the paper code's DDPM: nf 128, ch_mult 1,2,2,2, 4 blocks,
  # attention at 16): 38 residual blocks run as 33 in 8 scanned runs and 5 single blocks
  # (the two middle ones, and the three whose input width differs from their neighbours').
  from lsgm_jax.models.unet import UNet
  x, t = jnp.zeros((1, 32, 32, 3)), jnp.ones((1,))
  cfg = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
             dropout=0.1)
  shapes = {scan: jax.eval_shape(lambda s=scan: UNet(**cfg, scan_blocks=s).init(
      jax.random.PRNGKey(0), x, t))["params"] for scan in (True, False)}
  counts = {s: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(p))
            for s, p in shapes.items()}
  assert counts[True] == counts[False] == 57_633_027
  runs = [jax.tree.leaves(v)[0].shape[0] for k, v in shapes[True].items() if "_scan_" in k]
  singles = [k for k in shapes[True] if k.startswith("ResnetBlockDDPM_")]
  assert (len(runs), sum(runs), len(singles)) == (8, 33, 5)
