"""--mode=import with the ``score_sde`` format (issue 12): score_sde_pytorch ``.pth`` and
score_sde (JAX) flax msgpack checkpoints of DDPM++ cont. (VP).

Fixtures (tests/fixtures/README.md): each reference's own NCSN++ (DDPM++ settings: BigGAN
blocks, no FIR, positional embedding of 999 t) at nf 4, ch_mult 1,2, one res block,
attention at 4, 8x8x1 data, with seeded weights, EMA and Adam moments, and its outputs at
four t; and the PyTorch reference's state-dict keys / shapes of the paper model.
"""

from __future__ import annotations

import gzip
import json
import os

import jax
import numpy as np
import pytest
from flax import serialization

from configs import sgm_digits, vp_cifar_ddpmpp
from lsgm_jax import data, methods
from lsgm_jax.checkpoint_import import ImportMismatchError, score_sde
from lsgm_jax.models.autoencoder_convert import read_torch_file

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TORCH_FILE = os.path.join(FIXTURES, "score_sde_small_checkpoint_2.pth")
TORCH_OUT = os.path.join(FIXTURES, "score_sde_small_outputs.npz")
JAX_FILE = os.path.join(FIXTURES, "score_sde_jax_small_checkpoint_4")
JAX_OUT = os.path.join(FIXTURES, "score_sde_jax_small_outputs.npz")
LAYOUT = os.path.join(FIXTURES, "score_sde_vp_ddpmpp_layout.json.gz")
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def small_config():
  """configs/sgm_digits.py with the fixtures' small DDPM++."""
  config = sgm_digits.get_config()
  model = config.model
  model.name, model.nf, model.ch_mult, model.num_res_blocks = "ncsnpp", 4, (1, 2), 1
  model.attn_resolutions, model.fir, model.resblock_type = (4,), False, "biggan"
  model.progressive, model.progressive_input = "none", "none"
  model.embedding_type, model.time_scale, model.dropout = "positional", 999.0, 0.1
  return config


def abstract(config):
  method = methods.build_method(config, data.dataset_info(config.data))
  return method, jax.eval_shape(method.init_state, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def small():
  config = small_config()
  method, target = abstract(config)
  x = np.zeros((4, 8, 8, 1), np.float32)
  t = np.zeros((4,), np.float32)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target.params)
  apply = jax.jit(lambda p, x, t: method.model.apply({"params": p}, x, t)).lower(
      params, x, t).compile(FAST_COMPILE)
  return config, target, apply


@pytest.mark.parametrize("path,outputs,nchw", [(TORCH_FILE, TORCH_OUT, True),
                                               (JAX_FILE, JAX_OUT, False)])
def test_forward_pass_equals_the_reference_network(small, path, outputs, nchw):
  config, target, apply = small
  imported = score_sde.convert(path, config, target)
  ref = np.load(outputs)
  x = np.transpose(ref["x"], (0, 2, 3, 1)) if nchw else ref["x"]
  for params, want in ((imported.params, ref["out_raw"]),
                       (imported.ema_params, ref["out_ema"])):
    got = np.asarray(apply(params, x, ref["t"]))
    got = np.transpose(got, (0, 3, 1, 2)) if nchw else got
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
  assert not np.allclose(ref["out_raw"], ref["out_ema"], atol=1e-3)
  assert "Adam moments" in imported.description
  assert imported.model_state == {}  # positional embedding: no Fourier frequencies


def test_torch_adam_and_step_land_in_the_optax_state(small):
  config, target, _ = small
  imported = score_sde.convert(TORCH_FILE, config, target)
  raw = read_torch_file(TORCH_FILE)
  assert imported.step == raw["step"] == 2 and int(imported.opt_state[0].count) == 2
  first = raw["optimizer"]["state"][0]  # all_modules.0 = the first Linear (no sigmas)
  np.testing.assert_array_equal(imported.opt_state[0].mu["temb_0"]["kernel"],
                                first["exp_avg"].T)


def test_jax_checkpoint_with_replicated_leaves_takes_replica_0(small, tmp_path):
  config, target, _ = small
  with open(JAX_FILE, "rb") as f:
    state = serialization.msgpack_restore(f.read())
  for key in ("params_ema",):
    state[key] = jax.tree.map(lambda v: np.stack([v, v + 1.0]), state[key])
  path = tmp_path / "checkpoint_4"
  path.write_bytes(serialization.msgpack_serialize(state))
  replicated = score_sde.convert(str(path), config, target)
  plain = score_sde.convert(JAX_FILE, config, target)
  for a, b in zip(jax.tree.leaves(replicated.ema_params), jax.tree.leaves(plain.ema_params)):
    np.testing.assert_array_equal(a, b)
  mu = state["optimizer"]["state"]["param_states"]["Dense_0"]["kernel"]["grad_ema"]
  np.testing.assert_array_equal(plain.opt_state[0].mu["temb_0"]["kernel"], mu)
  assert plain.step == 4 and int(plain.opt_state[0].count) == 4


def test_ve_configs_are_refused_in_one_line(small):
  _, target, _ = small
  config = small_config()
  config.sde.name = "vesde"
  with pytest.raises(ImportMismatchError, match="log sigma") as info:
    score_sde.convert(TORCH_FILE, config, target)
  assert "\n" not in str(info.value)


def test_paper_ddpmpp_layout_imports_completely_with_the_reference_count():
  """score_sde_pytorch's own DDPM++ cont. (VP) keys and shapes map onto
  configs/vp_cifar_ddpmpp.py: every key consumed, every leaf filled, 61,804,419."""
  with gzip.open(LAYOUT, "rt") as f:
    entry = json.load(f)
  assert entry["trainable"] == 61_804_419
  config = vp_cifar_ddpmpp.get_config()
  _, target = abstract(config)
  model = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in entry["keys"]}
  params = [k for k, _ in entry["keys"] if k not in entry["buffers"]]
  shadow = [model[k] for k in params]
  imported = score_sde.cld_sgm.convert_training_file(
      {"model": model, "ema": {"shadow_params": shadow}, "step": 1}, config, target,
      "score_sde_pytorch", buffers=score_sde.TORCH_BUFFERS)
  assert sum(x.size for x in jax.tree.leaves(imported.params)) == 61_804_419
