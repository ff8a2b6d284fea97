"""Importing NVlabs/LSGM checkpoints (issue 12, format ``lsgm``).

* Golden: ``tests/fixtures/lsgm_vae_dml.pt`` (``train_vae.py``'s file),
  ``lsgm_vada_bin.pt`` (``train_vada.py``'s, with the NCSN++ score model and its EMA) and
  ``lsgm_vae_hq_input_skip.pt`` (a ``train_vae.py`` file of a small CelebA-HQ-style NVAE
  with ``--progressive_input_vae input_skip``) were written by the reference's own code
  (seeded, perturbed weights / BatchNorm statistics / gains) with ``torch.save``;
  ``lsgm_golden.npz`` / ``lsgm_hq_golden.npz`` hold the reference's outputs on fixed
  inputs with fixed noise (README in tests/fixtures). Imported here, this project's
  models must reproduce them to 1e-5 relative.
* Paper size: reference-LAYOUT state dicts for configs/lsgm_cifar.py:best_nll and
  configs/lsgm_celebahq256.py:vae, written below from the reference's module naming
  (nvae.py / layers/*.py) with zero-stride arrays, must be consumed key for key and fill
  every leaf of ``jax.eval_shape(init_state)``.
* Bad input: another format, mismatched args, a stage mismatch: one line each.
* Optimizer states: the file's Adam / Adamax moments land on the leaves of their weights
  (``parameters()`` order, scanned NCSN++ runs), count and schedule step carried; an
  imported stage-1 state restores as --mode=train does and takes a step.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lsgm_jax import data, methods
from lsgm_jax.checkpoint_import import ImportMismatchError, converter, lsgm_format
from lsgm_jax.models import autoencoder_convert
from lsgm_jax.models import nvae as nvae_lib
from lsgm_jax.models import nvae_decoder_dist
from lsgm_jax.objectives import spectral_regularization
from tests.helpers import REPO, load_config

FIXTURES = os.path.join(REPO, "tests", "fixtures")


def _small(kind: str):
  """The fixtures' configs: lsgm_cifar's VAE stage (``dml``) and lsgm_mnist's joint stage
  (``vada``), shrunk to the fixtures' sizes."""
  if kind == "dml":
    config = load_config("lsgm_cifar", "balanced_vae")
    with config.unlocked():
      config.data.image_size = 8
      vae = config.lsgm.vae
      vae.num_channels_enc = vae.num_channels_dec = 4
      vae.num_preprocess_cells = vae.num_postprocess_cells = 2
      vae.num_cell_per_cond_enc = vae.num_cell_per_cond_dec = 1
      vae.num_latent_scales, vae.num_groups_per_scale, vae.num_latent_per_group = 2, 2, 4
      vae.channel_mult = (1, 2, 2)
      vae.num_nf = 1
  else:
    config = load_config("lsgm_mnist", "lsgm")
    with config.unlocked():
      vae = config.lsgm.vae
      vae.num_channels_enc = vae.num_channels_dec = 4
      vae.num_preprocess_cells = vae.num_postprocess_cells = 2
      vae.num_latent_per_group = 4
      config.model.nf, config.model.num_res_blocks = 4, 1
      config.lsgm.embedding_dim = 8
      config.lsgm.weight_decay_norm_dae = 1e-2  # keeps the score model's spectral vectors
  return config


def _method_and_target(config):
  method = methods.build_method(config, data.dataset_info(config.data))
  return method, jax.eval_shape(method.init_state, jax.random.PRNGKey(0))


def _compile(fn, *args):
  """``fn`` compiled for ``args`` with XLA's cheap CPU settings: a third of the CPU time of
  op-by-op dispatch for these many-layer models (this file's time budget)."""
  return jax.jit(fn).lower(*args).compile(compiler_options={
      "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


def _run(fn, *args):
  return _compile(fn, *args)(*args)


@pytest.fixture(scope="module")
def dml():
  """(config, method, abstract state) of the stage-1 fixture, shared by three tests."""
  config = _small("dml")
  return (config,) + _method_and_target(config)


def _check_vae(method, imported, golden, prefix):
  """ELBO terms, decoder logits, spectral and BN penalties of the reference's NVAE."""
  variables = {"params": imported.params["vae"], **imported.model_state["vae"]}
  x = jnp.asarray(golden[f"{prefix}_x"])
  # The fixture's noise is what this NVAE draws from PRNGKey(0) (README).
  out, mutated = _run(lambda v, x: method.vae.apply(
      v, x, train=False, rngs={"sample": jax.random.PRNGKey(0)}, mutable=["spectral", "losses"]),
                       variables, x)
  np.testing.assert_allclose(out.logits, golden[f"{prefix}_logits"], rtol=1e-5, atol=1e-6)
  recon = -nvae_decoder_dist.decoder_log_prob(method.vae_cfg, out.logits, x)
  np.testing.assert_allclose(recon, golden[f"{prefix}_recon"], rtol=1e-5)
  # The reference's KL is the one-sample log q - log p per group (utils.vae_terms).
  kl = np.stack([np.sum(lq - lp, axis=(1, 2, 3)) for lq, lp in zip(out.log_q, out.log_p)], 1)
  np.testing.assert_allclose(kl, golden[f"{prefix}_kl"], rtol=1e-5, atol=1e-5)
  log_q = sum(np.sum(lq, axis=(1, 2, 3)) for lq in out.log_q)
  np.testing.assert_allclose(log_q, golden[f"{prefix}_log_q"], rtol=1e-5)
  # The power-iteration vectors of the file's SpectralNormCalculator, four more iterations.
  np.testing.assert_allclose(nvae_lib.spectral_norm_penalty(mutated["losses"]),
                             golden[f"{prefix}_spectral"], rtol=1e-5)


def test_stage1_file_reproduces_the_reference_nvae(dml):
  golden = np.load(os.path.join(FIXTURES, "lsgm_golden.npz"))
  config, method, target = dml
  imported = converter("lsgm")(os.path.join(FIXTURES, "lsgm_vae_dml.pt"), config, target)
  assert imported.step == 42
  assert imported.ema_params is None and imported.opt_state is None
  _check_vae(method, imported, golden, "dml")
  np.testing.assert_allclose(nvae_lib.batchnorm_penalty(imported.params["vae"]),
                             golden["dml_bn_penalty"], rtol=1e-6)


def test_joint_file_reproduces_the_reference_vae_and_score_model():
  """train_vada.py's file: MBConv / Bernoulli NVAE, NCSN++ raw and EMA weights at 3 t,
  and both spectral-regularisation states."""
  golden = np.load(os.path.join(FIXTURES, "lsgm_golden.npz"))
  config = _small("vada")
  method, target = _method_and_target(config)
  imported = converter("lsgm")(os.path.join(FIXTURES, "lsgm_vada_bin.pt"), config, target)
  assert imported.step == 77 and "EMA" in imported.description
  _check_vae(method, imported, golden, "vada")
  z, t = jnp.asarray(golden["vada_z"]), jnp.asarray(golden["vada_t"])
  score = lambda p, sr, z, t: (  # noqa: E731
      method.score_model.apply({"params": p}, z, t, train=False),
      spectral_regularization.spectral_penalty(p, sr, 4)[0])
  sr_state = imported.model_state["score_sr"]
  score = _compile(score, imported.params["score"], sr_state, z, t)
  for which, params in (("raw", imported.params), ("ema", imported.ema_params)):
    out, penalty = score(params["score"], sr_state, z, t)
    np.testing.assert_allclose(out, golden[f"vada_score_{which}"], rtol=1e-5, atol=1e-5)
    if which == "raw":
      np.testing.assert_allclose(penalty, golden["vada_dae_spectral"], rtol=1e-5)
  # The reference keeps no EMA of the VAE: its raw weights stand in.
  assert imported.ema_params["vae"] is imported.params["vae"]


def _small_hq():
  """configs/lsgm_celebahq256.py:vae (res_mbconv, 5-bit mixture, two flows, the input
  pyramid) shrunk to the input_skip fixture: 16x16, 4 channels, 3 latent scales x 1
  group x 4, one cell per group, one flow."""
  config = load_config("lsgm_celebahq256", "vae")
  with config.unlocked():
    config.data.image_size = 16
    vae = config.lsgm.vae
    vae.num_channels_enc = vae.num_channels_dec = 4
    vae.num_cell_per_cond_enc = vae.num_cell_per_cond_dec = 1
    vae.num_latent_scales, vae.num_groups_per_scale, vae.num_latent_per_group = 3, 1, 4
    vae.channel_mult = (1, 1, 2, 2)
    vae.num_nf = 1
  return config


def test_input_skip_file_reproduces_the_reference_nvae(tmp_path):
  """``--progressive_input_vae input_skip`` (the CelebA-HQ-256 NVAE): the reference's two
  InputSkipCombinerCells are imported and the whole NVAE reproduces its outputs."""
  golden = np.load(os.path.join(FIXTURES, "lsgm_hq_golden.npz"))
  config = _small_hq()
  method, target = _method_and_target(config)
  fixture = os.path.join(FIXTURES, "lsgm_vae_hq_input_skip.pt")
  imported = converter("lsgm")(fixture, config, target)
  assert imported.step == 56
  skip = imported.params["vae"]["enc_input_skip_1"]["conv"]
  assert skip["conv"]["kernel"].shape == (3, 3, 8, 8) and skip["bn"]["scale"].shape == (8,)
  _check_vae(method, imported, golden, "hq")
  np.testing.assert_allclose(nvae_lib.batchnorm_penalty(imported.params["vae"]),
                             golden["hq_bn_penalty"], rtol=1e-6)
  # A config without the input pyramid is refused by the args check, in one line.
  with config.unlocked():
    config.lsgm.vae.progressive_input_vae = "none"
  with pytest.raises(ImportMismatchError, match=r"progressive_input_vae \(file 'input_skip', "
                     r"config 'none'\)") as err:
    lsgm_format.convert(fixture, config, target)
  assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- layout

class _RefLayout:
  """Reference ``vae_state_dict`` keys / shapes, after NVlabs/LSGM nvae.py and layers/."""

  def __init__(self, args: dict):
    self.a, self.shapes = args, {}

  def conv(self, name, cin, cout, k, bias=True, wn=True, groups=1):
    self.shapes[f"{name}.weight"] = (cout, cin // groups, k, k)
    if bias:
      self.shapes[f"{name}.bias"] = (cout,)
    if wn:
      self.shapes[f"{name}.log_weight_norm"] = (cout, 1, 1, 1)
    else:
      self.shapes[f"{name}.weight_normalized"] = (cout, cin // groups, k, k)

  def bn(self, name, c):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      self.shapes[f"{name}.{leaf}"] = (c,)
    self.shapes[f"{name}.num_batches_tracked"] = ()

  def cell(self, name, cin, cout, cell_type):
    stride = 2 if cell_type.startswith("down") else -1 if cell_type.startswith("up") else 1
    if stride == 2:
      for i in range(1, 5):
        self.conv(f"{name}.skip.conv_{i}", cin, cout // 4 if i < 4 else cout - 3 * (cout // 4), 1)
    elif stride == -1:
      self.conv(f"{name}.skip.1", cin, cout, 1, bias=False)
    mb = self.a["arch_instance"] == "res_mbconv" and cell_type.endswith(("dec", "post"))
    if mb:
      ex = 6 if cell_type.endswith("dec") else 3
      hid, u, p = cin * ex, int(stride == -1), f"{name}._ops.0.conv"
      self.bn(f"{p}.{u}.bn", cin)
      self.conv(f"{p}.{u + 1}.conv.0", cin, hid, 1, bias=False, wn=False)
      self.bn(f"{p}.{u + 1}.conv.1", hid)
      self.conv(f"{p}.{u + 2}.conv.0", hid, hid, 5, bias=False, wn=False, groups=hid)
      self.bn(f"{p}.{u + 2}.conv.1", hid)
      self.conv(f"{p}.{u + 3}", hid, cout, 1, bias=False, wn=False)
      self.bn(f"{p}.{u + 4}.bn", cout)
    else:
      for i in range(2):
        self.bn(f"{name}._ops.{i}.bn_act", cin if i == 0 else cout)
        self.conv(f"{name}._ops.{i}.conv_0", cin if i == 0 else cout, cout, 3)
    hidden = max(cout // 16, 4)
    self.shapes.update({f"{name}.se.se.0.weight": (hidden, cout), f"{name}.se.se.0.bias": (hidden,),
                        f"{name}.se.se.2.weight": (cout, hidden), f"{name}.se.se.2.bias": (cout,)})

  def build(self, size: int, cin_img: int) -> dict:
    a = self.a
    mult, ce, cd = a["channel_mult"], a["num_channels_enc"], a["num_channels_dec"]
    nls, ngs, nz = a["num_latent_scales"], a["num_groups_per_scale"], a["num_latent_per_group"]
    top = size // 2 ** (a["num_preprocess_blocks"] + nls - 1)
    self.shapes["prior_ftr0"] = (cd * mult[-1], top, top)
    self.conv("stem", cin_img, ce, 3)
    s, i = 0, 0
    for _ in range(a["num_preprocess_blocks"]):
      for c in range(a["num_preprocess_cells"]):
        last = c == a["num_preprocess_cells"] - 1
        self.cell(f"pre_process.{i}", ce * mult[s], ce * mult[s + last], "down_pre" if last else "normal_pre")
        s, i = s + last, i + 1
    j = 0
    for sc in range(nls):
      for g in range(ngs):
        for _ in range(a["num_cell_per_cond_enc"]):
          self.cell(f"enc_tower.{j}", ce * mult[s], ce * mult[s], "normal_enc")
          j += 1
        if not (sc == nls - 1 and g == ngs - 1):
          self.conv(f"enc_tower.{j}.conv", cd * mult[s], ce * mult[s], 1)
          j += 1
      if sc < nls - 1:
        self.cell(f"enc_tower.{j}", ce * mult[s], ce * mult[s + 1], "down_enc")
        s, j = s + 1, j + 1
    if a["progressive_input_vae"] == "input_skip":  # InputSkipCombinerCell(BNSwishConv)
      for sc in range(nls - 1):
        cin = ce * mult[a["num_preprocess_blocks"] + sc]
        self.bn(f"progressive_input_cells.{sc}.conv.bn_act", cin)
        self.conv(f"progressive_input_cells.{sc}.conv.conv_0", cin, ce * mult[
            a["num_preprocess_blocks"] + sc + 1], 3)
    n = 0
    for sc in range(nls):
      for g in range(ngs):
        self.conv(f"enc_sampler.{n}.1", ce * mult[s - sc], 2 * nz, 3)
        n += 1
    for f in range(n * a["num_nf"]):
      for cell in ("cell1", "cell2"):
        p = f"nf_cells.{f}.{cell}"
        self.conv(f"{p}.conv.convz.0", nz, 6 * nz, 3, bias=False)
        self.conv(f"{p}.conv.convz.2", 6 * nz, 6 * nz, 5, bias=False, groups=6 * nz)
        self.conv(f"{p}.mu.conv_0", 6 * nz, nz, 1)
    for g in range(n):
      self.conv(f"eps_conv.{g}", nz, nz, 3)
    j = 0
    for sc in range(nls):
      for g in range(ngs):
        self.conv(f"dec_tower.{j}.conv", cd * mult[s] + nz, cd * mult[s], 1)
        j += 1
        for _ in range(a["num_cell_per_cond_dec"]):
          self.cell(f"dec_tower.{j}", cd * mult[s], cd * mult[s], "normal_dec")
          j += 1
      if sc < nls - 1:
        self.cell(f"dec_tower.{j}", cd * mult[s], cd * mult[s - 1], "up_dec")
        s, j = s - 1, j + 1
    i = 0
    for _ in range(a["num_postprocess_blocks"]):
      for c in range(a["num_postprocess_cells"]):
        cout = cd * mult[s - 1] if c == 0 else cd * mult[s]
        self.cell(f"post_process.{i}", cd * mult[s], cout, "up_post" if c == 0 else "normal_post")
        s, i = s - (c == 0), i + 1
    out = {"dml": 100, "bin": 1}[a["decoder_dist"]]
    self.conv("image_conditional.1", cd * mult[s], out, 3)
    return self.shapes


def _args(config) -> dict:
  vae = config.lsgm.vae
  args = {f: (list(vae[f]) if f == "channel_mult" else vae[f]) for f in lsgm_format.ARCH_FIELDS}
  args.update(dataset=config.data.name, batch_size=32)
  args["progressive_input_vae"] = vae.progressive_input_vae
  return args


def _layout_file(args: dict, size: int, cin: int) -> dict:
  """A stage-1 ``checkpoint.pt`` object with zero-stride tensors (nothing allocated)."""
  shapes = _RefLayout(args).build(size, cin)
  one = np.ones((), np.float32)
  sd = {k: (np.broadcast_to(np.int64(7), s) if k.endswith("num_batches_tracked")
            else np.broadcast_to(one, s)) for k, s in shapes.items()}
  count: dict = {}
  for k, s in shapes.items():
    if len(s) == 4 and k.endswith(".weight"):
      mat = (s[0], int(np.prod(s[1:])))
      count[mat] = count.get(mat, 0) + 1
  sn = {"sr_u": {m: np.broadcast_to(one, (n, m[0])) for m, n in count.items()},
        "sr_v": {m: np.broadcast_to(one, (n, m[1])) for m, n in count.items()}}
  return {"epoch": 600, "global_step": 117_000, "args": args, "vae_state_dict": sd,
          "vae_optimizer": {"state": {}, "param_groups": []}, "sn_calculator": sn,
          "grad_scalar": {"scale": 1024.0}, "best_score": 1e10}


def _ref_score_layout(a: dict, channels: int, size: int, mult=None) -> dict:
  """Reference ``dae_state_dict`` keys / shapes, after NVlabs/LSGM score_sde/ncsnpp.py
  (BigGAN blocks, no pyramids, attention at 16; channel multipliers ``mult``, all 1 by
  default as for cifar10)."""
  mult = mult or (1,) * a["num_scales_dae"]
  shapes, n = {"mixing_logit": (1, channels, 1, 1)}, [0]
  nf, emb = a["num_channels_dae"], 4 * a["embedding_dim"]

  def mod():
    n[0] += 1
    return f"all_modules.{n[0] - 1}"

  def lin_or_conv(m, cout, cin, k=None):
    shapes[f"{m}.weight"] = (cout, cin) if k is None else (cout, cin, k, k)
    shapes[f"{m}.bias"] = (cout,)

  def norm(m, c):
    shapes.update({f"{m}.weight": (c,), f"{m}.bias": (c,)})

  def block(cin, cout, resample=False):
    m = mod()
    norm(f"{m}.GroupNorm_0", cin)
    lin_or_conv(f"{m}.Conv_0", cout, cin, 3)
    lin_or_conv(f"{m}.Dense_0", cout, emb)
    norm(f"{m}.GroupNorm_1", cout)
    lin_or_conv(f"{m}.Conv_1", cout, cout, 3)
    if cin != cout or resample:
      lin_or_conv(f"{m}.Conv_2", cout, cin, 1)

  def attn(c):
    m = mod()
    norm(f"{m}.GroupNorm_0", c)
    for i in range(4):
      shapes.update({f"{m}.NIN_{i}.W": (c, c), f"{m}.NIN_{i}.b": (c,)})

  lin_or_conv(mod(), emb, a["embedding_dim"])
  lin_or_conv(mod(), emb, emb)
  lin_or_conv(mod(), nf, channels, 3)
  levels, hs, c = a["num_scales_dae"], [nf], nf
  for level in range(levels):
    for _ in range(a["num_cell_per_scale_dae"]):
      block(c, nf * mult[level])
      c = nf * mult[level]
      if size // 2 ** level == 16:
        attn(c)
      hs.append(c)
    if level != levels - 1:
      block(c, c, resample=True)
      hs.append(c)
  block(c, c)
  attn(c)
  block(c, c)
  for level in reversed(range(levels)):
    for _ in range(a["num_cell_per_scale_dae"] + 1):
      block(c + hs.pop(), nf * mult[level])
      c = nf * mult[level]
    if size // 2 ** level == 16:
      attn(c)
    if level != 0:
      block(c, c, resample=True)
  norm(mod(), c)
  lin_or_conv(mod(), channels, c, 3)
  return shapes


def _sn_state(shapes: dict, one) -> dict:
  count: dict = {}
  for k, s in shapes.items():
    if len(s) == 4 and k.endswith(".weight") and k != "mixing_logit":
      mat = (s[0], int(np.prod(s[1:])))
      count[mat] = count.get(mat, 0) + 1
  return {"sr_u": {m: np.broadcast_to(one, (c, m[0])) for m, c in count.items()},
          "sr_v": {m: np.broadcast_to(one, (c, m[1])) for m, c in count.items()}}


def _joint_layout_file(args: dict, image_size: int, latent_channels: int, latent_size: int,
                       mult=None) -> dict:
  """A train_vada.py ``checkpoint.pt`` object with zero-stride tensors: the NVAE, the
  NCSN++ with its optimizer's EMA, and both spectral states."""
  obj = _layout_file(args, image_size, 3)
  one = np.ones((), np.float32)
  dae = {k: np.broadcast_to(one, s)
         for k, s in _ref_score_layout(args, latent_channels, latent_size, mult).items()}
  obj.update(dae_state_dict=dae, vae_sn_calculator=obj.pop("sn_calculator"),
             dae_sn_calculator=_sn_state({k: v.shape for k, v in dae.items()}, one),
             dae_optimizer={"state": {i: {"ema": v, "step": 3} for i, v in enumerate(dae.values())},
                            "param_groups": [{"params": list(range(len(dae)))}]})
  return obj


_SCORE_ARGS = dict(embedding_dim=128, embedding_type="positional", embedding_scale=1000.0,
                   fir=True, progressive="none", progressive_input="none",
                   progressive_combine="sum", mixed_prediction=True)


def test_paper_size_layout_is_consumed_and_fills_every_leaf(monkeypatch):
  """lsgm_cifar.py:best_nll (vae3 + lsgm3): the largest NVAE (with IAF flows) and the
  375M-parameter score model, with the optimizer's EMA and both spectral states."""
  config = load_config("lsgm_cifar", "best_nll")
  _, target = _method_and_target(config)
  args = _args(config)
  args.update(num_channels_dae=512, num_scales_dae=3, num_cell_per_scale_dae=8, **_SCORE_ARGS)
  obj = _joint_layout_file(args, 32, 180, 16)
  monkeypatch.setattr(lsgm_format, "_read", lambda path: obj)
  imported = lsgm_format.convert("checkpoint.pt", config, target)
  assert imported.step == 117_000
  count = lambda tree: sum(np.size(l) for l in jax.tree.leaves(tree))  # noqa: E731
  assert count(imported.params["vae"]) == 130_622_772  # REFERENCE_NOTES: LSGM NVAE vae3
  assert count(imported.ema_params["score"]) == 375_561_064  # LSGM score model
  # An extra tensor is refused by name.
  obj["vae_state_dict"]["decoder.extra.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(ImportMismatchError, match="decoder.extra.weight"):
    lsgm_format.convert("checkpoint.pt", config, target)


def test_celebahq256_layout_is_consumed_and_fills_every_leaf(monkeypatch):
  """configs/lsgm_celebahq256.py:lsgm (the README's train_vae.py / train_vada.py
  commands, the NVAE's input pyramid included): every reference tensor of a joint file
  has a home and every leaf is filled. The stage-1 variant's NVAE is the same
  (tests/test_nvae.py)."""
  config = load_config("lsgm_celebahq256", "lsgm")
  _, target = _method_and_target(config)
  args = _args(config)
  assert args["progressive_input_vae"] == "input_skip"
  args.update(dataset="celeba_256", num_channels_dae=256, num_scales_dae=4,
              num_cell_per_scale_dae=8, **_SCORE_ARGS)
  # util/utils.py get_channel_multiplier("celeba_256", 4); the score model sees the top
  # latent scale, 8 groups x 20 channels at 32x32.
  obj = _joint_layout_file(args, 256, 160, 32, mult=(1, 2, 2, 2))
  # The reference's state dicts for these commands hold 3,622 / 957 entries.
  assert len(obj["vae_state_dict"]) == 3622 and len(obj["dae_state_dict"]) == 957
  assert sum(k.startswith("progressive_input_cells.") for k in obj["vae_state_dict"]) == 16
  monkeypatch.setattr(lsgm_format, "_read", lambda path: obj)
  imported = lsgm_format.convert("checkpoint.pt", config, target)
  count = lambda tree: sum(np.size(l) for l in jax.tree.leaves(tree))  # noqa: E731
  # The reference's NVAE(args) / NCSNpp(args, 160), built by its own constructors on CPU.
  assert count(imported.params["vae"]) == 51_296_572
  assert count(imported.ema_params["score"]) == 408_367_680
  skip = imported.model_state["vae"]["spectral"]["enc_input_skip_1"]["conv"]["conv"]
  assert skip["u"].shape == (256,) and skip["v"].shape == (3 * 3 * 128,)


def test_file_without_spectral_state_gets_power_iterations(dml, monkeypatch):
  """checkpoint_fid.pt-like files hold no sn_calculator: u^T W v must then be the top
  singular value of every (weight-normalised, masked) kernel."""
  config, _, target = dml
  obj = autoencoder_convert.read_torch_file(os.path.join(FIXTURES, "lsgm_vae_dml.pt"))
  del obj["sn_calculator"]
  monkeypatch.setattr(lsgm_format, "_read", lambda path: obj)
  imported = lsgm_format.convert("checkpoint.pt", config, target)
  params, spectral = imported.params["vae"], imported.model_state["vae"]["spectral"]
  for path in (("stem",), ("enc_sampler_1",), ("nf_2_0", "cell2", "conv_z"),
               ("post_0_0", "skip")):
    node, uv = params, spectral
    for name in path:
      node, uv = node[name], uv[name]
    kernel = node["kernel"] * (lsgm_format._ar_mask(path, node["kernel"])
                               if path[0].startswith("nf_") else 1.0)
    norm = np.sqrt(np.sum(kernel ** 2, axis=(0, 1, 2)))
    w = np.exp(node["log_gain"]) * kernel / (norm + 1e-5)
    mat = np.transpose(w, (3, 0, 1, 2)).reshape(w.shape[-1], -1)
    top = np.linalg.svd(mat, compute_uv=False)[0]
    np.testing.assert_allclose(uv["u"] @ mat @ uv["v"], top, rtol=1e-4)


def test_bad_inputs_fail_in_one_line(dml, tmp_path):
  config, _, target = dml
  fixture = os.path.join(FIXTURES, "lsgm_vae_dml.pt")

  def one_line(match, path, cfg=config, tgt=target):
    with pytest.raises(ImportMismatchError, match=match) as err:
      lsgm_format.convert(path, cfg, tgt)
    assert "\n" not in str(err.value)

  # Another format: an LDM checkpoint; a file that is no torch file; a truncated one.
  one_line("no 'vae_state_dict'", os.path.join(FIXTURES, "ldm_tiny_torch.ckpt"))
  junk = tmp_path / "junk.pt"
  junk.write_bytes(b"not a checkpoint")
  one_line("not a readable LSGM checkpoint", str(junk))
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(open(fixture, "rb").read()[:5000])
  one_line("not a readable LSGM checkpoint", str(truncated))
  # Args that differ: every architecture field named.
  other = _small("dml")
  with other.unlocked():
    other.lsgm.vae.num_channels_enc = other.lsgm.vae.num_channels_dec = 8
    other.lsgm.vae.num_groups_per_scale = 3
  one_line(r"num_groups_per_scale \(file 2, config 3\).*num_channels_enc \(file 4, config 8\)"
           r".*num_channels_dec", fixture, other, target)
  # The score model's args; and the stages crossed.
  vada = _small("vada")
  joint = os.path.join(FIXTURES, "lsgm_vada_bin.pt")
  with vada.unlocked():
    vada.model.nf = 8
  one_line(r"score model: num_channels_dae \(file 4, config 8\)", joint, vada, target)
  one_line("stage-1 .* config.lsgm.stage='train_vae'", fixture, vada, target)
  one_line("joint-stage .* config.lsgm.stage='train_vada'", joint, config, target)


# ----------------------------------------------------------------------------- optimizer

def _parameter_order(state_dict: dict) -> list[str]:
  """``module.parameters()`` of the reference NVAE / NCSN++: state-dict order without the
  BatchNorm buffers and without the second registration of MBConv weights."""
  skip = (".running_mean", ".running_var", ".num_batches_tracked", ".weight_normalized")
  return [k for k in state_dict if not k.endswith(skip)]


def _random(shapes: dict, rng) -> dict:
  out = {}
  for k, s in shapes.items():
    if k.endswith("num_batches_tracked"):
      out[k] = np.asarray(3, np.int64)
    elif k.endswith("running_var"):
      out[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
    else:
      out[k] = (0.3 * rng.standard_normal(s)).astype(np.float32)
  return out


def _torch_optimizer(state_dict: dict, step, **moments) -> dict:
  """A torch ``Optimizer.state_dict()`` over ``parameters()``: each moment a function of
  the parameter (so that every imported leaf can be checked against its weight)."""
  names = _parameter_order(state_dict)
  state = {i: dict({m: f(state_dict[n]) for m, f in moments.items()}, step=step)
           for i, n in enumerate(names)}
  return {"state": state, "param_groups": [{"params": list(range(len(names))),
                                            "betas": (0.9, 0.999), "amsgrad": False}]}


def _find(opt_state, part, kind):
  """The ``kind`` state (ScaleByAdamState, ScaleByScheduleState) of partition ``part``."""
  found = [n for n in jax.tree.leaves(opt_state.inner_states[part],
                                      is_leaf=lambda n: isinstance(n, kind)) if isinstance(n, kind)]
  assert len(found) == 1
  return found[0]


def _adam_state(opt_state, part):
  return _find(opt_state, part, optax.ScaleByAdamState)


def _assert_leaves(tree, like, fn):
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(like), strict=True):
    np.testing.assert_allclose(a, fn(np.asarray(b)), rtol=1e-6)


def test_joint_file_moments_land_on_their_leaves(monkeypatch):
  """train_vada.py's optimizers: the reference-written file's Adam moments of the score
  model (number check), and, with synthetic Adam moments 2w / w^2 (VAE) and 3w / w^2
  (score model, two residual blocks per level: scanned runs) on random weights, every
  moment leaf equal to its weight's function: parameters() order and layouts agree."""
  config = _small("vada")
  _, target = _method_and_target(config)
  fixture = os.path.join(FIXTURES, "lsgm_vada_bin.pt")
  imported = converter("lsgm")(fixture, config, target)
  obj = autoencoder_convert.read_torch_file(fixture)
  # dae.parameters()[0] is mixing_logit [1, C, 1, 1]; conv_in (all_modules.2.weight) OIHW.
  sd = obj["dae_state_dict"]
  index = {k: i for i, k in enumerate(sd)}
  score = _adam_state(imported.opt_state, "score")
  ref = obj["dae_optimizer"]["state"]
  np.testing.assert_array_equal(score.mu["score"]["mixing_logit"],
                                ref[index["mixing_logit"]]["exp_avg"].reshape(-1))
  np.testing.assert_array_equal(score.nu["score"]["conv_in"]["kernel"], np.transpose(
      ref[index["all_modules.2.weight"]]["exp_avg_sq"], (2, 3, 1, 0)))
  assert int(score.count) == 1  # the file's optimizer stepped once
  assert "score: Adam moments (step 1)" in imported.description
  assert "vae: fresh (empty in the file)" in imported.description
  # The synthetic file.
  with config.unlocked():
    config.model.num_res_blocks = 2
  method, target = _method_and_target(config)
  assert any("_scan_" in k for k in target.params["score"])
  h, _, c = method.latent_shape
  rng = np.random.default_rng(5)
  args = _args(config)
  obj = _layout_file(args, 32, 1)
  obj["vae_state_dict"] = _random({k: v.shape for k, v in obj["vae_state_dict"].items()}, rng)
  args.update(num_channels_dae=config.model.nf, num_scales_dae=len(config.model.ch_mult),
              num_cell_per_scale_dae=2, embedding_dim=config.lsgm.embedding_dim)
  dae = _random(_ref_score_layout(args, c, h, tuple(config.model.ch_mult)), rng)
  del obj["args"]
  obj.update(global_step=1234, dae_state_dict=dae, vae_sn_calculator=obj.pop("sn_calculator"),
             dae_sn_calculator=_sn_state({k: v.shape for k, v in dae.items()},
                                         np.ones((), np.float32)),
             vae_optimizer=_torch_optimizer(obj["vae_state_dict"], np.float32(7),
                                            exp_avg=lambda w: 2 * w, exp_avg_sq=np.square),
             dae_optimizer=_torch_optimizer(dae, np.float32(7), exp_avg=lambda w: 3 * w,
                                            exp_avg_sq=np.square, ema=lambda w: w))
  monkeypatch.setattr(lsgm_format, "_read", lambda path: obj)
  imported = lsgm_format.convert("checkpoint.pt", config, target)
  for part, factor in (("vae", 2), ("score", 3)):
    adam = _adam_state(imported.opt_state, part)
    assert int(adam.count) == 7
    _assert_leaves(adam.mu[part], imported.params[part], lambda w: factor * w)
    _assert_leaves(adam.nu[part], imported.params[part], np.square)
    assert int(_find(imported.opt_state, part, optax.ScaleByScheduleState).count) == 1234
  # Frozen VAE (lsgm.train_vae=False): its partition has no moments; the score's carry.
  with config.unlocked():
    config.lsgm.train_vae = False
  _, frozen_target = _method_and_target(config)
  frozen = lsgm_format.convert("checkpoint.pt", config, frozen_target)
  assert "vae: frozen" in frozen.description
  assert int(_adam_state(frozen.opt_state, "score").count) == 7


def test_stage1_adamax_state_is_carried_and_training_resumes(monkeypatch, tmp_path):
  """train_vae.py's Adamax (exp_avg, exp_inf) -> optax.adamax's (mu, nu) for a config
  with optimizer adamax; --mode=import then --mode=train takes a step from it. Under
  optimizer adam the state is refused with the reason."""
  from lsgm_jax import checkpoint, experiment
  from lsgm_jax.checkpoint_import import driver
  config = load_config("lsgm_digits", "vae_smoke")
  config.checkpoint.async_save = False
  args = _args(config)
  del args["dataset"]  # the digits are no dataset of the reference
  obj = _layout_file(args, 8, 1)
  obj["vae_state_dict"] = _random({k: v.shape for k, v in obj["vae_state_dict"].items()},
                                  np.random.default_rng(6))
  obj.update(global_step=5, vae_optimizer=_torch_optimizer(
      obj["vae_state_dict"], 5, exp_avg=lambda w: 0.01 * w,
      exp_inf=lambda w: np.abs(w) + 0.1))
  monkeypatch.setattr(lsgm_format, "_read", lambda path: obj)
  _, target = _method_and_target(config)
  imported = lsgm_format.convert("checkpoint.pt", config, target)
  adamax = _adam_state(imported.opt_state, "vae")
  assert int(adamax.count) == 5 and "vae: Adamax moments (step 5)" in imported.description
  _assert_leaves(adamax.mu["vae"], imported.params["vae"], lambda w: 0.01 * w)
  _assert_leaves(adamax.nu["vae"], imported.params["vae"], lambda w: np.abs(w) + 0.1)
  workdir = str(tmp_path / "imported")
  with config.unlocked():  # an existing path: the file read is the object above
    config.checkpoint.import_path = os.path.join(FIXTURES, "lsgm_vae_dml.pt")
    config.checkpoint.import_format = "lsgm"
  driver.import_checkpoint(config, workdir)  # --mode=import
  # --mode=train's resume (Experiment.init_or_restore), then one train step (compiled
  # with the cheap settings of this file instead of train.train's, for the time budget).
  exp = experiment.Experiment(config, workdir, devices=jax.devices()[:1])
  checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  try:
    state, meta = exp.init_or_restore(checkpointer)
  finally:
    checkpointer.close()
  assert meta and int(state.step) == 5
  restored = _adam_state(state.opt_state, "vae")
  _assert_leaves(restored.mu["vae"], imported.params["vae"], lambda w: 0.01 * w)
  batch = next(data.make_train_iterator(config.data, global_batch_size=8, seed=0))
  batch = jax.tree.map(jnp.asarray, batch)
  state, metrics = _run(exp.method.train_step, state, batch)
  assert int(state.step) == 6 and float(metrics["skipped"]) == 0.0
  after = _adam_state(state.opt_state, "vae")
  assert int(after.count) == 6
  # The step started from the carried moments: Adamax's nu_6 = max(b2 nu_5, |g| + eps).
  b2 = float(config.optim.beta2)
  for nu6, w in zip(jax.tree.leaves(after.nu["vae"]), jax.tree.leaves(imported.params["vae"])):
    assert np.all(np.asarray(nu6) >= b2 * (np.abs(w) + 0.1) * (1 - 1e-6))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  # Another optimizer kind: a fresh state, and the reason in the description.
  with config.unlocked():
    config.optim.optimizer = "adam"
  imported = lsgm_format.convert("checkpoint.pt", config, target)
  assert imported.opt_state is None
  assert ("the file's Adamax state has no counterpart in config.optim.optimizer=adam"
          in imported.description)
