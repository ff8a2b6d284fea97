"""--mode=import with the ``cld_sgm`` format (issue 12).

Fixtures (tests/fixtures/README.md): a CLD-SGM ``checkpoint_3.pth`` written by the
reference's own code for a small NCSN++ (nf 4, ch_mult 1,2, one res block, attention at
8, 8x8x1 data, seeded weights, 3 Adam steps, EMA shadows that differ from the weights) with
its network outputs at four t, and the reference's state-dict keys / shapes of the three
paper models.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os

import jax
import numpy as np
import pytest

from configs import cld_digits
from lsgm_jax import checkpoint, data, main, methods, train
from lsgm_jax.checkpoint_import import ImportMismatchError, cld_sgm, driver
from lsgm_jax.experiment import Experiment
from lsgm_jax.train_state import create_train_state
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError, read_torch_file

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMALL = os.path.join(FIXTURES, "cld_sgm_small_checkpoint_3.pth")
OUTPUTS = os.path.join(FIXTURES, "cld_sgm_small_outputs.npz")
LAYOUTS = os.path.join(FIXTURES, "cld_sgm_paper_layouts.json.gz")
# Compile time dominates on CPU; the tiny model runs in milliseconds either way.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def small_config(**model):
  """configs/cld_digits.py shrunk to the fixture's reference model."""
  config = cld_digits.get_config()
  config.model.nf = 4
  config.model.attn_resolutions = (8,)
  config.model.dropout = 0.1
  config.model.update(model)
  config.sampling.num_steps = 2
  config.sampling.num_samples = 2
  config.sampling.batch_size = 2
  config.checkpoint.async_save = False
  return config


def abstract(config):
  method = methods.build_method(config, data.dataset_info(config.data))
  return method, jax.eval_shape(method.init_state, jax.random.PRNGKey(config.seed))


@pytest.fixture(scope="module")
def small():
  config = small_config()
  method, target = abstract(config)
  return config, method, target, cld_sgm.convert(SMALL, config, target)


def test_forward_pass_equals_the_reference_network(small):
  """Raw and EMA weights give the reference NCSN++'s outputs (1e-5 relative)."""
  _, method, _, imported = small
  ref = np.load(OUTPUTS)
  u = np.transpose(ref["u"], (0, 2, 3, 1))  # NCHW -> NHWC
  apply = jax.jit(lambda p, s: method.model.apply({"params": p, **s}, u, ref["t"])).lower(
      imported.params, imported.model_state).compile(FAST_COMPILE)
  for params, want in ((imported.params, ref["out_raw"]),
                       (imported.ema_params, ref["out_ema"])):
    got = np.transpose(np.asarray(apply(params, imported.model_state)), (0, 3, 1, 2))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
  assert not np.allclose(ref["out_raw"], ref["out_ema"], atol=1e-3)


def test_file_entries_land_where_they_belong(small):
  _, _, _, imported = small
  raw = read_torch_file(SMALL)
  w = raw["model"]["module.all_modules.0.W"]
  np.testing.assert_array_equal(imported.model_state["constants"]["fourier"]["W"], w)
  assert imported.step == raw["step"] == 3
  # shadow_params[0] is all_modules.1 (the first Linear): W is not in the list.
  np.testing.assert_array_equal(imported.ema_params["temb_0"]["kernel"],
                                raw["ema"]["shadow_params"][0].T)
  adam = imported.opt_state[0]
  assert int(adam.count) == 3 and int(imported.opt_state[1].count) == 3
  torch_state = raw["optimizer"]["state"][1]  # index 1 = all_modules.1.weight
  np.testing.assert_array_equal(adam.mu["temb_0"]["kernel"], torch_state["exp_avg"].T)
  np.testing.assert_array_equal(adam.nu["temb_0"]["kernel"], torch_state["exp_avg_sq"].T)


def test_sample_of_an_import_equals_sample_of_the_same_params_saved_natively(small, tmp_path):
  config, method, _, imported = small
  config = small_config()
  config.checkpoint.import_path = SMALL
  config.checkpoint.import_format = "cld_sgm"
  result = main.run(config, str(tmp_path / "imported"), main.Mode.IMPORT)
  assert result["step"] == 3 and os.listdir(tmp_path / "imported" / "checkpoints") == ["3"]
  # The same numbers through the training path's state constructor and Checkpointer.
  tx = method.make_optimizer()  # jitted: one compile instead of one per eager op
  native = jax.jit(lambda p, s, r: create_train_state(p, s, tx, r))(
      imported.params, imported.model_state, jax.random.PRNGKey(1))
  native = native.replace(step=np.int32(3), ema_params=imported.ema_params)
  saver = checkpoint.Checkpointer(str(tmp_path / "native"), config.checkpoint)
  saver.save(3, native, {"data_position": 0, "fingerprint": method.fingerprint(native.params)})
  saver.close()
  # --mode=sample's steps (train.sample), with one Experiment so the sampler compiles once.
  exp = Experiment(config, str(tmp_path / "native"))
  samples = []
  for name in ("native", "imported"):
    exp.workdir = str(tmp_path / name)
    state, step, _ = exp.restore_for_inference()
    if name == "native":
      compiled = exp.sample_fn.lower(state, jax.random.PRNGKey(0), 2).compile(FAST_COMPILE)
      exp.sample_fn = lambda state, rng, num: compiled(state, rng)
    out = tmp_path / name / "samples" / f"step_{step}"
    train.write_samples(exp, state, str(out))
    samples.append(np.load(out / "samples.npz")["samples"])
  np.testing.assert_array_equal(samples[0], samples[1])
  assert samples[0].shape == (2, 8, 8, 1) and np.all(np.isfinite(samples[0]))


def _import(config, workdir, path, fmt="cld_sgm"):
  config.checkpoint.import_path = str(path)
  config.checkpoint.import_format = fmt
  return driver.import_checkpoint(config, str(workdir))


@pytest.mark.parametrize("case", ["other_format", "truncated", "config_mismatch",
                                  "not_torch", "no_path"])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
  config, path, error = small_config(), SMALL, ImportMismatchError
  if case == "other_format":  # a torch file that is not a CLD-SGM training checkpoint
    path, error = os.path.join(FIXTURES, "ldm_tiny_torch.ckpt"), CheckpointFormatError
  elif case == "truncated":
    path, error = tmp_path / "cut.pth", CheckpointFormatError
    with open(SMALL, "rb") as f:
      path.write_bytes(f.read()[:400_000])
  elif case == "config_mismatch":  # nf 16 against the file's nf 4
    config = small_config(nf=16)
  elif case == "not_torch":
    path, error = OUTPUTS, CheckpointFormatError
  else:
    path, error = "", ValueError
  workdir = tmp_path / "wd"
  with pytest.raises(error) as info:
    _import(config, workdir, path)
  assert "\n" not in str(info.value)
  assert not workdir.exists()
  if case == "config_mismatch":
    assert "mis-shaped" in str(info.value) and "conv_in" in str(info.value)


def test_refuses_a_workdir_that_has_checkpoints(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "100")
  with pytest.raises(ValueError, match="already holds checkpoints"):
    _import(small_config(), tmp_path, SMALL)
  assert os.listdir(tmp_path / "checkpoints") == ["100"]


def _zeros(shape):
  return np.broadcast_to(np.float32(0), tuple(shape))  # no memory at paper size


@pytest.mark.parametrize("name", ["cld_cifar"])
def test_paper_size_reference_layouts_import_completely(name):
  """The reference's own keys and shapes of each paper model (written by its code)
  map onto the config's model: every key consumed, every leaf filled."""
  with gzip.open(LAYOUTS, "rt") as f:
    entry = json.load(f)[name]
  module, _, variant = name.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  _, target = abstract(config)
  model = {k: _zeros(s) for k, s in entry["keys"]}
  fixed = {"module." + k for k in entry["requires_grad"]}
  shadow = [_zeros(s) for k, s in entry["keys"] if k not in fixed]
  state = {i: {"step": 5.0, "exp_avg": _zeros(s), "exp_avg_sq": _zeros(s)}
           for i, (k, s) in enumerate(entry["keys"]) if k not in fixed}
  optimizer = {"state": state, "param_groups": [{"params": list(range(len(model))),
                                                  "amsgrad": False, "lr": 2e-4}]}
  imported = cld_sgm.convert_training_file(
      {"model": model, "ema": {"shadow_params": shadow}, "optimizer": optimizer,
       "step": 7}, config, target, "CLD-SGM")
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(imported.params))
  assert count == entry["trainable"]
  assert imported.step == 7 and "Adam moments (step 5)" in imported.description
  assert len(jax.tree.leaves(imported.model_state)) == len(entry["requires_grad"])


def _torch_state_dict(config, params, constants):
  """A CLD-SGM ``model`` state dict (``module.all_modules.<i>...``) holding ``params``
  (the unrolled flax tree): ``ncsnpp_torch``'s mapping run backwards."""
  from lsgm_jax.checkpoint_import import ncsnpp_torch as nt
  sd = {}
  for i, (name, kind) in enumerate(nt.reference_layout(config.model, 8)):
    if kind == "fourier":
      sd[f"module.all_modules.{i}.W"] = constants[name]["W"]
      continue
    for child, sub in nt._CHILDREN[kind].items():  # noqa: SLF001
      node = params
      for part in tuple(name.split("/")) + sub:
        node = node.get(part) if isinstance(node, dict) else None
      if node is None:
        continue
      prefix = f"module.all_modules.{i}." + (f"{child}." if child else "")
      nin = child.startswith("NIN")
      for leaf, value in node.items():
        if leaf == "kernel" and value.ndim == 4:
          sd[prefix + "weight"] = np.transpose(value, (3, 2, 0, 1))
        elif leaf == "kernel":
          sd[prefix + ("W" if nin else "weight")] = value if nin else value.T
        elif leaf == "scale":
          sd[prefix + "weight"] = value
        else:
          sd[prefix + ("b" if nin else "bias")] = value
  return sd


def test_import_is_the_same_network_with_scan_blocks_on_and_off():
  """Issue 15 item 7: the importer maps into the config's layout. A CLD-SGM file of a
  model with runs of equal residual blocks imports with ``model.scan_blocks`` on (runs
  stacked) and off (the references' layout): the same arrays after
  ``ncsnpp.unrolled_layout`` (params, EMA, Adam moments) and the same outputs."""
  from lsgm_jax.models import ncsnpp
  targets = {scan: abstract(small_config(num_res_blocks=2, scan_blocks=scan))
             for scan in (True, False)}
  flat_target = targets[False][1]
  assert any("_scan_" in k for k in targets[True][1].params)
  assert ncsnpp.unrolled_layout(targets[True][1].params).keys() == flat_target.params.keys()
  rs = np.random.RandomState(0)
  fill = lambda s: (rs.standard_normal(s.shape) * 0.2).astype(np.float32)
  params = jax.tree.map(fill, flat_target.params)
  model = _torch_state_dict(small_config(num_res_blocks=2), params,
                            jax.tree.map(fill, flat_target.model_state["constants"]))
  trainable = [k for k in model if not k.endswith(".W") or ".NIN_" in k]
  state = {i: {"step": 4.0, "exp_avg": model[k] * 0.1, "exp_avg_sq": model[k] ** 2}
           for i, k in enumerate(model) if k in trainable}
  obj = {"model": model, "ema": {"shadow_params": [model[k] * 0.5 for k in trainable]},
         "optimizer": {"state": state, "param_groups": [
             {"params": list(range(len(model))), "amsgrad": False, "lr": 1e-3}]},
         "step": 4}
  imported = {scan: cld_sgm.convert_training_file(obj, small_config(num_res_blocks=2,
                                                                    scan_blocks=scan),
                                                  targets[scan][1], "CLD-SGM")
              for scan in (True, False)}
  assert "Adam moments (step 4)" in imported[True].description
  for field in ("params", "ema_params", "opt_state", "model_state"):
    a = ncsnpp.unrolled_layout(getattr(imported[True], field))
    b = getattr(imported[False], field)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), field
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 a, b)
  jax.tree.map(np.testing.assert_array_equal, imported[False].params, params)
  ref = np.load(OUTPUTS)
  u = np.random.RandomState(1).standard_normal((2, 8, 8, 2)).astype(np.float32)
  t = ref["t"][:2]
  outs = []
  for scan in (True, False):
    method, got = targets[scan][0], imported[scan]
    apply = jax.jit(lambda p, s, m=method: m.model.apply({"params": p, **s}, u, t)).lower(
        got.ema_params, got.model_state).compile(FAST_COMPILE)
    outs.append(np.asarray(apply(got.ema_params, got.model_state)))
  assert np.abs(outs[1]).mean() > 1e-3
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6, rtol=0)
