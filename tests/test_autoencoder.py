"""The latent VAE's first stage: LDM architecture and parameter counts, the checkpoint
converter (torch zip without torch, safetensors), the losses, the two-optimizer method,
encoding a dataset to latents, and the latents dataset."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import checkpoint, data, encode_latents, methods, train
from lsgm_jax.config_defaults import get_default_config
from lsgm_jax.data import latents as latents_data
from lsgm_jax.methods.autoencoder import ConfigError
from lsgm_jax.models import autoencoder as ae_lib
from lsgm_jax.models import autoencoder_convert as convert
from lsgm_jax.models.perceptual import load_perceptual_net
from lsgm_jax.objectives import autoencoder_losses as losses
from lsgm_jax.presets import autoencoder as ae_presets

# A tiny model with every kind of layer: attention at 4x4, nin_shortcut, down/upsample.
TINY = ae_lib.AutoencoderConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                attn_resolutions=(4,), resolution=8, in_channels=3,
                                out_ch=3, z_channels=2, embed_dim=2, num_groups=4)


def _key(seed):
  # "rbg" keys: XLA compiles RngBitGenerator far faster than threefry on CPU.
  return jax.random.key(seed, impl="rbg")


def _host_fill(abstract, seed: int = 0):
  """Arrays of the abstract tree's shapes filled from numpy (no XLA init compile)."""
  r = np.random.RandomState(seed)

  def fill(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    return (r.normal(size=x.shape) / np.sqrt(fan_in)).astype(x.dtype)
  return jax.tree.map(fill, abstract)


def _random_params(cfg: ae_lib.AutoencoderConfig, seed: int = 0) -> dict:
  """Params of the right shapes filled from numpy (no XLA compile of the init)."""
  shapes = convert.abstract_params(cfg)
  r = np.random.RandomState(seed)
  return jax.tree.map(lambda s: (r.normal(size=s.shape) * 0.3).astype(np.float32), shapes)


# --- architecture -------------------------------------------------------------------------

def test_kl_f8_has_the_ldm_parameter_count():
  """83,653,863 = LDM kl-f8 AutoencoderKL (the Stable Diffusion VAE architecture):
  encoder 34,163,592 + decoder 49,490,179 + quant_conv 72 + post_quant_conv 20, counted
  from the reference's layer shapes by ``count_ldm_params`` (see its code)."""
  abstract = convert.abstract_params(ae_presets.PRESETS["kl-f8"])
  sizes = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in abstract.items()}
  assert sizes == {"encoder": 34_163_592, "decoder": 49_490_179, "quant_conv": 72,
                   "post_quant_conv": 20}
  for name, cfg in ae_presets.PRESETS.items():
    counted = sum(x.size for x in jax.tree.leaves(convert.abstract_params(cfg)))
    assert counted == ae_lib.count_ldm_params(cfg), name
  assert ae_lib.count_ldm_params(ae_presets.PRESETS["kl-f4"]) == 55_312_063
  assert ae_lib.count_ldm_params(ae_presets.PRESETS["kl-f16"]) == 69_610_963
  for name, shape in (("kl-f4", (64, 64, 3)), ("kl-f8", (32, 32, 4)), ("kl-f16", (16, 16, 16))):
    assert ae_presets.PRESETS[name].latent_shape((256, 256, 3)) == shape


def _np_reference_encode_decode(sd: dict[str, np.ndarray], cfg, x_nhwc: np.ndarray):
  """LDM's Encoder/Decoder written again in NumPy on the torch layout (NCHW, OIHW)."""

  def conv(x, prefix, stride=1, pad=None):
    w, b = sd[prefix + ".weight"], sd[prefix + ".bias"]
    k = w.shape[-1]
    if pad is None:
      pad = (k // 2, k // 2, k // 2, k // 2)  # torch padding=k//2 (top, bottom, left, right)
    x = np.pad(x, ((0, 0), (0, 0), pad[:2], pad[2:]))
    n, c, h, wd = x.shape
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for i in range(k):
      for j in range(k):
        patch = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
        out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]

  def norm(x, prefix):
    n, c, h, w = x.shape
    g = x.reshape(n, cfg.num_groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)
    return (g.reshape(n, c, h, w) * sd[prefix + ".weight"][None, :, None, None]
            + sd[prefix + ".bias"][None, :, None, None])

  swish = lambda v: v / (1 + np.exp(-v))  # noqa: E731

  def resblock(x, p):
    h = conv(swish(norm(x, p + ".norm1")), p + ".conv1")
    h = conv(swish(norm(h, p + ".norm2")), p + ".conv2")
    if p + ".nin_shortcut.weight" in sd:
      x = conv(x, p + ".nin_shortcut")
    return x + h

  def attn(x, p):
    n, c, hh, ww = x.shape
    y = norm(x, p + ".norm")
    q, k, v = (conv(y, f"{p}.{m}").reshape(n, c, -1) for m in "qkv")
    w = np.einsum("nci,ncj->nij", q, k) * c ** -0.5
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return x + conv(np.einsum("nij,ncj->nci", w, v).reshape(n, c, hh, ww), p + ".proj_out")

  levels = len(cfg.ch_mult)
  h = conv(np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64), "encoder.conv_in")
  for i in range(levels):
    for j in range(cfg.num_res_blocks):
      h = resblock(h, f"encoder.down.{i}.block.{j}")
      if (cfg.resolution >> i) in cfg.attn_resolutions:
        h = attn(h, f"encoder.down.{i}.attn.{j}")
    if i != levels - 1:
      h = conv(h, f"encoder.down.{i}.downsample.conv", stride=2, pad=(0, 1, 0, 1))
  h = resblock(attn(resblock(h, "encoder.mid.block_1"), "encoder.mid.attn_1"),
               "encoder.mid.block_2")
  h = conv(swish(norm(h, "encoder.norm_out")), "encoder.conv_out")
  mean = conv(h, "quant_conv")[:, :cfg.embed_dim]
  h = conv(mean, "post_quant_conv")
  h = conv(h, "decoder.conv_in")
  h = resblock(attn(resblock(h, "decoder.mid.block_1"), "decoder.mid.attn_1"),
               "decoder.mid.block_2")
  for i in reversed(range(levels)):
    for j in range(cfg.num_res_blocks + 1):
      h = resblock(h, f"decoder.up.{i}.block.{j}")
      if (cfg.resolution >> i) in cfg.attn_resolutions:
        h = attn(h, f"decoder.up.{i}.attn.{j}")
    if i != 0:
      h = conv(h.repeat(2, axis=2).repeat(2, axis=3), f"decoder.up.{i}.upsample.conv")
  h = conv(swish(norm(h, "decoder.norm_out")), "decoder.conv_out")
  return np.transpose(mean, (0, 2, 3, 1)), np.transpose(h, (0, 2, 3, 1))


# --- the converter -------------------------------------------------------------------------

class _Global:
  """A pickle GLOBAL written by name (the torch class need not exist here)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle only checks that a reduce function is callable
    raise NotImplementedError


class _Tensor:
  """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, key, offset, shape, strides):
    self.args = (("storage", key), offset, tuple(shape), tuple(strides))

  def __reduce__(self):
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            self.args + (False, collections.OrderedDict()))


class _TorchLikePickler(pickle._Pickler):  # pylint: disable=protected-access

  def persistent_id(self, obj):
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "storage":
      return ("storage", _Global("torch", "FloatStorage"), obj[1], "cpu", 0)
    return None

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      return
    super().save(obj, save_persistent_id)


def write_torch_zip(path: str, state_dict: dict[str, np.ndarray], **extra) -> None:
  """A checkpoint in torch.save's zip layout, written without torch: archive/data.pkl
  (protocol 2, FloatStorage persistent ids) + one raw storage per key under
  archive/data/<key>. The first two tensors share one storage (the second at an
  offset) and 4-D weights are stored transposed (non-contiguous strides), to exercise
  _rebuild_tensor_v2's offset and stride."""
  def contiguous_strides(shape):
    return tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))

  names = list(state_dict)
  values = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  first, second = values[names[0]], values[names[1]]
  storages = {"0": np.concatenate([first.ravel(), second.ravel()]).tobytes()}
  tensors = collections.OrderedDict()
  tensors[names[0]] = _Tensor("0", 0, first.shape, contiguous_strides(first.shape))
  tensors[names[1]] = _Tensor("0", first.size, second.shape, contiguous_strides(second.shape))
  for i, name in enumerate(names[2:], start=1):
    value = values[name]
    if value.ndim == 4:  # stored as [I, O, H, W]; the tensor [O, I, H, W] is a view
      o, c, h, w = value.shape
      storages[str(i)] = np.ascontiguousarray(np.transpose(value, (1, 0, 2, 3))).tobytes()
      strides = (h * w, o * h * w, w, 1)
    else:
      storages[str(i)] = value.tobytes()
      strides = contiguous_strides(value.shape)
    tensors[name] = _Tensor(str(i), 0, value.shape, strides)
  buffer = io.BytesIO()
  _TorchLikePickler(buffer, protocol=2).dump({"state_dict": tensors, **extra})
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    archive.writestr("archive/byteorder", "little")
    archive.writestr("archive/version", "3\n")
    for key, raw in storages.items():
      archive.writestr(f"archive/data/{key}", raw)


def write_safetensors(path: str, state_dict: dict[str, np.ndarray]) -> None:
  header, chunks, offset = {}, [], 0
  for name, value in state_dict.items():
    raw = np.ascontiguousarray(value, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def test_converter_reads_a_torch_zip_without_torch_and_matches_numpy_ldm(tmp_path):
  params = _random_params(TINY)
  sd = convert.params_to_state_dict(params)
  assert "encoder.down.0.block.0.norm1.weight" in sd
  assert "decoder.mid.block_1.conv1.weight" in sd and "decoder.up.1.upsample.conv.bias" in sd
  assert "encoder.down.0.downsample.conv.weight" in sd and "encoder.down.1.attn.0.q.weight" in sd
  assert sd["encoder.conv_in.weight"].shape == (8, 3, 3, 3)  # OIHW
  # A whole LDM: the first stage under first_stage_model., plus keys to ignore.
  full = {f"first_stage_model.{k}": v for k, v in sd.items()}
  full["first_stage_model.loss.logvar"] = np.zeros((), np.float32)
  full["model.diffusion_model.input_blocks.0.0.weight"] = np.ones((4, 4, 3, 3), np.float32)
  path = str(tmp_path / "model.ckpt")
  write_torch_zip(path, full, global_step=7, hyper_parameters={"embed_dim": 2})
  read = convert.read_state_dict(path)
  for k, v in full.items():
    np.testing.assert_array_equal(read[k], v)
  converted = convert.load_ldm_checkpoint(path, TINY)
  jax.tree.map(np.testing.assert_array_equal, converted, params)

  # The flax model with converted weights computes LDM's function (NumPy, torch layout).
  x = np.random.RandomState(1).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  model = ae_lib.AutoencoderKL(TINY)
  recon, mean, _ = model.apply({"params": converted}, jnp.asarray(x))
  ref_mean, ref_recon = _np_reference_encode_decode(sd, TINY, x)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(recon, ref_recon, rtol=1e-4, atol=1e-4)

  st = str(tmp_path / "model.safetensors")
  write_safetensors(st, sd)
  jax.tree.map(np.testing.assert_array_equal, convert.load_ldm_checkpoint(st, TINY), params)


def test_converter_names_missing_unexpected_and_misshaped_keys(tmp_path):
  sd = convert.params_to_state_dict(_random_params(TINY))
  missing = dict(sd)
  del missing["decoder.conv_out.bias"]
  with pytest.raises(convert.CheckpointFormatError,
                     match=r"0 unexpected keys .*1 missing params \['decoder/conv_out/bias'\]"):
    convert.state_dict_to_params(missing, TINY)
  unknown = dict(sd, **{"encoder.extra.weight": np.zeros((3,), np.float32)})
  with pytest.raises(convert.CheckpointFormatError,
                     match=r"1 unexpected keys \['encoder.extra.weight'\]"):
    convert.state_dict_to_params(unknown, TINY)
  wrong = dict(sd, **{"quant_conv.weight": np.zeros((6, 4, 1, 1), np.float32)})
  with pytest.raises(convert.CheckpointFormatError, match=r"quant_conv.weight has shape"):
    convert.state_dict_to_params(wrong, TINY)
  with open(tmp_path / "legacy.ckpt", "wb") as f:
    pickle.dump({"state_dict": {}}, f)
  with pytest.raises(convert.CheckpointFormatError, match="not a zip-format"):
    convert.read_state_dict(str(tmp_path / "legacy.ckpt"))


# tests/fixtures/ldm_tiny_torch.ckpt was written once by real torch.save (see
# tests/fixtures/README.md): this first stage's params (seed 3) under first_stage_model.,
# plus keys a reader must survive: a 0-d tensor, a strided view with a storage offset and
# its base's transpose sharing one storage, float16 and int64 tensors.
FIXTURE_AE = ae_lib.AutoencoderConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1,
                                      attn_resolutions=(4,), resolution=8, in_channels=3,
                                      out_ch=3, z_channels=2, embed_dim=2, num_groups=2)


def test_converter_reads_a_real_torch_save_file_without_torch():
  path = os.path.join(os.path.dirname(__file__), "fixtures", "ldm_tiny_torch.ckpt")
  obj = convert.read_torch_zip(path)
  assert (obj["global_step"], obj["epoch"]) == (7, 2)
  read = convert.read_state_dict(path)
  sd = convert.params_to_state_dict(_random_params(FIXTURE_AE, seed=3))
  assert set(read) == {f"first_stage_model.{k}" for k in sd} | {
      "first_stage_model.loss.logvar", "model.diffusion_model.view",
      "model.diffusion_model.shared", "model.diffusion_model.half",
      "model.diffusion_model.steps"}
  for k, v in sd.items():
    got = read[f"first_stage_model.{k}"]
    assert got.dtype == np.float32 and got.shape == v.shape, k
    np.testing.assert_array_equal(got, v)
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_array_equal(read["model.diffusion_model.view"], base[1:, ::2])
  np.testing.assert_array_equal(read["model.diffusion_model.shared"], base.T)
  half = read["model.diffusion_model.half"]
  assert half.dtype == np.float16
  np.testing.assert_array_equal(half, np.arange(5, dtype=np.float16) / 4)
  np.testing.assert_array_equal(read["model.diffusion_model.steps"], np.array([3, -1]))
  assert read["first_stage_model.loss.logvar"].shape == ()
  jax.tree.map(np.testing.assert_array_equal, convert.load_ldm_checkpoint(path, FIXTURE_AE),
               _random_params(FIXTURE_AE, seed=3))


def test_converter_matches_torch_save_when_torch_is_installed(tmp_path):
  torch = pytest.importorskip("torch")
  sd = convert.params_to_state_dict(_random_params(TINY))
  path = str(tmp_path / "torch.ckpt")
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
  jax.tree.map(np.testing.assert_array_equal, convert.load_ldm_checkpoint(path, TINY),
               convert.state_dict_to_params(sd, TINY))


# --- losses --------------------------------------------------------------------------------

def _write_perceptual(path: str, seed: int = 0) -> None:
  """A two-block VGG-like perceptual net in the documented npz layout."""
  r = np.random.RandomState(seed)
  arrays = {"conv1_1/kernel": r.normal(size=(3, 3, 3, 4)) * 0.3, "conv1_1/bias": r.normal(size=4),
            "conv2_1/kernel": r.normal(size=(3, 3, 4, 6)) * 0.3, "conv2_1/bias": r.normal(size=6),
            "conv2_2/kernel": r.normal(size=(3, 3, 6, 6)) * 0.3, "conv2_2/bias": r.normal(size=6),
            "lin1": r.uniform(size=4), "lin2": r.uniform(size=6)}
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


def test_lpips_distance_matches_its_definition(tmp_path):
  path = str(tmp_path / "vgg.npz")
  _write_perceptual(path)
  net = load_perceptual_net(path)
  assert net.module.spec.block_widths == ((4,), (6, 6))
  r = np.random.RandomState(0)
  a, b = (jnp.asarray(r.uniform(-1, 1, (2, 8, 8, 1)), jnp.float32) for _ in range(2))
  fa, fb = net.features(a), net.features(b)
  assert [f.shape for f in fa] == [(2, 8, 8, 4), (2, 4, 4, 6)]  # grey -> 3 channels, pool
  expected = 0.0
  for x, y, w in zip(fa, fb, net.lin):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10)
    y = y / (np.linalg.norm(y, axis=-1, keepdims=True) + 1e-10)
    expected = expected + ((x - y) ** 2 @ w).mean(axis=(1, 2))
  got = losses.lpips_distance(fa, fb, net.lin)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.all(np.asarray(got) > 0)
  np.testing.assert_allclose(losses.lpips_distance(fa, fa, net.lin), 0.0, atol=1e-7)
  bad = dict(np.load(path))
  del bad["lin2"]
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match=r"lin2 must have shape \(6,\)"):
    load_perceptual_net(str(tmp_path / "bad.npz"))


def test_gan_and_reconstruction_terms():
  real, fake = jnp.array([[2.0, 0.5]]), jnp.array([[-2.0, 0.5]])
  # hinge: 0.5 (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 (0.25 + 0.75)
  np.testing.assert_allclose(losses.hinge_discriminator_loss(real, fake), [0.5])
  np.testing.assert_allclose(losses.generator_adversarial_loss(fake), [0.75])
  x, y = jnp.zeros((1, 2, 2, 1)), jnp.full((1, 2, 2, 1), 0.5)
  np.testing.assert_allclose(losses.l1_loss(x, y), [0.5])
  np.testing.assert_allclose(losses.psnr(x, y, 2.0), [10 * np.log10(4 / 0.25)], rtol=1e-6)
  mean, logvar = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, np.log(2.0)]])
  np.testing.assert_allclose(losses.gaussian_kl(mean, logvar),
                             [0.5 + 0.5 * (2.0 - 1.0 - np.log(2.0))], rtol=1e-6)
  assert float(losses.adaptive_weight(jnp.full((4,), 3.0), jnp.full((4,), 1.0))) == \
      pytest.approx(6.0 / (2.0 + 1e-4))


# --- the method -----------------------------------------------------------------------------

def tiny_config(**overrides):
  config = get_default_config()
  config.method = "autoencoder"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  a = config.autoencoder
  a.ch, a.ch_mult, a.num_res_blocks, a.num_groups = 8, (1, 2), 1, 4
  a.z_channels, a.embed_dim, a.disc_ndf, a.disc_layers = 2, 2, 8, 1
  a.disc_start = 0
  config.training.batch_size = 16
  config.training.num_train_steps = 2
  config.eval.batch_size = 297
  config.checkpoint.async_save = False
  config.checkpoint.every_steps = 0
  config.parallel.data = 1
  for key, value in overrides.items():
    section, field = key.rsplit(".", 1)
    setattr(config[section], field, value)
  return config


def _batch(n=16):
  return next(data.make_train_iterator(tiny_config().data, global_batch_size=n, seed=0))


def test_perceptual_weight_without_weights_is_a_config_error():
  config = tiny_config(**{"autoencoder.perceptual_weight": 1.0})
  info = data.dataset_info(config.data)
  with pytest.raises(ConfigError, match=r"config.autoencoder.perceptual_weights_path"):
    methods.build_method(config, info)


def test_one_backward_pass_trains_both_players(tmp_path):
  """The discriminator group's gradient is exactly the hinge loss's (reconstructions
  held fixed); the autoencoder group's is the generator loss's (discriminator held
  fixed); before disc_start the discriminator gets no gradient and no GAN term."""
  path = str(tmp_path / "vgg.npz")
  _write_perceptual(path)
  config = tiny_config(**{"autoencoder.perceptual_weight": 0.7,
                          "autoencoder.perceptual_weights_path": path,
                          "autoencoder.disc_start": 5})
  method = methods.build_method(config, data.dataset_info(config.data))
  params = _host_fill(jax.eval_shape(method.init_params, _key(0))[0])
  _, model_state = jax.eval_shape(method.init_params, _key(0))
  model_state = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), model_state)
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  rng = _key(1)

  @jax.jit
  def everything(params):  # one compile for all the gradients compared below
    def grads_at(step):
      return jax.grad(lambda p: method.loss(p, model_state, batch, rng, step)[0])(params)
    metrics = method.loss(params, model_state, batch, rng, jnp.int32(5))[1][0]
    # Reconstructions as the loss makes them (same noise key), then the hinge loss alone.
    noise_rng, _ = jax.random.split(rng)
    mean, logvar = method.model.apply({"params": params["autoencoder"]}, batch["x"],
                                      method=method.model.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(noise_rng, mean.shape)
    recon = method.model.apply({"params": params["autoencoder"]}, z,
                               method=method.model.decode)

    def d_loss(dp):
      real, upd = method._disc(dp, model_state["discriminator"], batch["x"])
      fake, _ = method._disc(dp, upd, recon)
      return jnp.mean(losses.hinge_discriminator_loss(real, fake))

    return (grads_at(jnp.int32(5)), grads_at(jnp.int32(4)), metrics,
            jax.grad(d_loss)(params["discriminator"]))

  on, off, metrics, expected = everything(params)
  assert float(metrics["loss/perceptual"]) > 0 and float(metrics["adversarial/on"]) == 1.0
  np.testing.assert_allclose(
      float(metrics["loss/nll"]),
      float(metrics["loss/l1"]) + 0.7 * float(metrics["loss/perceptual"]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6),
               on["discriminator"], expected)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(off["discriminator"]))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(off["autoencoder"])) > 0
  # The generator's GAN term changes only the autoencoder's gradient.
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), on["autoencoder"],
                      off["autoencoder"])
  assert max(jax.tree.leaves(diff)) > 0


def test_two_optimizers_and_eval_terms(tmp_path):
  lpips_path = str(tmp_path / "lpips.npz")
  _write_perceptual(lpips_path)
  config = tiny_config(**{"autoencoder.disc_lr": 5e-3,
                          "autoencoder.adaptive_disc_weight": False,
                          "eval.lpips_weights_path": lpips_path})
  method = methods.build_method(config, data.dataset_info(config.data))
  abstract = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  # multi_transform: one inner state per group.
  assert set(abstract.params) == {"autoencoder", "discriminator"}
  assert set(abstract.opt_state.inner_states) == {"autoencoder", "discriminator"}
  state = abstract.replace(params=_host_fill(abstract.params),
                           ema_params=_host_fill(abstract.params),
                           opt_state=jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                  abstract.opt_state),
                           model_state=jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                                                    abstract.model_state),
                           rng=jax.random.PRNGKey(0), step=np.int32(0),
                           num_skipped=np.int32(0), consecutive_skips=np.int32(0))
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}

  @jax.jit
  def run(state):
    new, metrics = method.train_step(state, batch)
    terms = method.eval_terms(new.params, new.model_state, dict(batch, mask=jnp.ones(16)),
                              None)
    images, info = method.generate(new.params, new.model_state, _key(3), 4)
    recon = method.model.apply({"params": new.params["autoencoder"]}, batch["x"])[0]
    return new, metrics, terms, images, info, recon

  new, metrics, terms, images, info, recon = run(state)
  for group in ("autoencoder", "discriminator"):
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(new.params[group]), jax.tree.leaves(state.params[group]))]
    assert max(moved) > 0, group
  # Adam's first step moves every weight by about its lr: 5e-3 vs optim.lr = 2e-4.
  disc_step = np.abs(np.asarray(new.params["discriminator"]["conv_out"]["kernel"])
                     - state.params["discriminator"]["conv_out"]["kernel"]).max()
  dec_step = np.abs(np.asarray(new.params["autoencoder"]["decoder"]["conv_out"]["kernel"])
                    - state.params["autoencoder"]["decoder"]["conv_out"]["kernel"]).max()
  assert 2e-3 < disc_step <= 5.1e-3 and dec_step <= 2.1e-4
  assert float(metrics["adversarial/on"]) == 1.0 and np.isfinite(float(metrics["loss"]))
  assert set(terms) == {"l1", "mse", "psnr", "kl", "l2_unit", "lpips"}
  np.testing.assert_allclose(terms["psnr"], 10 * np.log10(4.0 / np.asarray(terms["mse"])),
                             rtol=1e-5)
  # eval.lpips_weights_path: LPIPS and the L2 norm on [0, 1] images (recon clipped).
  from lsgm_jax.evaluation import reconstruction
  unit = lambda a: (np.clip(np.asarray(a), -1, 1) + 1) / 2
  np.testing.assert_allclose(
      terms["lpips"], reconstruction.lpips(load_perceptual_net(lpips_path),
                                           unit(batch["x"]), unit(recon)), rtol=1e-5)
  np.testing.assert_allclose(
      terms["l2_unit"], np.linalg.norm((unit(batch["x"]) - unit(recon)).reshape(16, -1),
                                       axis=1), rtol=1e-5)
  assert images.shape == (4, 8, 8, 1) and float(info["prior_decodes"]) == 1.0


# --- encoding and the latents dataset ---------------------------------------------------------

def _save_init_checkpoint(config, workdir):
  exp = train.Experiment(config, workdir, devices=jax.devices()[:1])
  abstract = exp.abstract_state
  state = abstract.replace(
      params=_host_fill(abstract.params), ema_params=_host_fill(abstract.params, seed=1),
      opt_state=jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract.opt_state),
      model_state=jax.tree.map(lambda s: np.ones(s.shape, s.dtype), abstract.model_state),
      rng=np.zeros(abstract.rng.shape, abstract.rng.dtype), step=np.int32(1),
      num_skipped=np.int32(0), consecutive_skips=np.int32(0))
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  ckpt.save(1, state, {"data_position": 1, "fingerprint": exp.fingerprint,
                       "config": config.to_json_best_effort()})
  ckpt.close()
  return jax.device_get(state)


def test_encode_writes_normalised_latents_and_load_first_stage_decodes(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path / "ae")
  with pytest.raises(FileNotFoundError, match="train first with --mode=train"):
    encode_latents.encode(config, workdir, devices=jax.devices()[:1])
  state = _save_init_checkpoint(config, workdir)
  summary = encode_latents.encode(config, workdir, devices=jax.devices()[:1])
  train_split = latents_data.load_split(summary["latents_dir"], "train")
  held_out = latents_data.load_split(summary["latents_dir"], "eval")
  assert train_split["z"].shape == (1500, 4, 4, 2) and held_out["z"].shape == (297, 4, 4, 2)
  # Global normalisation (appendix B): the training latents have mean 0 and std 1.
  assert abs(float(np.mean(train_split["z"]))) < 1e-4
  assert float(np.std(train_split["z"])) == pytest.approx(1.0, abs=1e-4)
  shift, scale = train_split["shift"], train_split["scale"]
  assert shift.shape == (2,) and shift[0] == shift[1]

  # The stored eval latents are the normalised posterior means of the eval images.
  images = next(data.make_eval_iterator(config.data, global_batch_size=297))
  model = ae_lib.AutoencoderKL(ae_lib.AutoencoderConfig(
      ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=8, in_channels=1, out_ch=1,
      z_channels=2, embed_dim=2, num_groups=4))
  ema = state.ema_params["autoencoder"]
  mean, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(
      ema, images["x"])
  np.testing.assert_allclose(held_out["z"], (np.asarray(mean) - shift) / scale, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_array_equal(held_out["label"], images["label"])

  # The second stage's view: the dataset, and the decoder that un-normalises.
  latents_config = tiny_config()
  latents_config.data.name = "latents"
  latents_config.data.latents_dir = summary["latents_dir"]
  info = data.dataset_info(latents_config.data)
  assert (info.shape, info.num_classes, info.num_train, info.num_eval) == \
      ((4, 4, 2), 10, 1500, 297)
  np.testing.assert_allclose(info.shift, shift)
  np.testing.assert_allclose(info.scale, scale)
  module, params, s, c = encode_latents.load_first_stage(workdir, latents_config)
  decoded, direct = jax.jit(lambda p, z, m: (
      encode_latents.decode_latents(module, p, s, c, z),
      model.apply({"params": ema}, m, method=model.decode)))(
          params, jnp.asarray(held_out["z"][:4]), mean[:4])
  np.testing.assert_allclose(decoded, direct, rtol=1e-4, atol=1e-4)


def test_latents_dataset_iterates_resumes_and_names_the_missing_dir(tmp_path):
  r = np.random.RandomState(0)
  directory = str(tmp_path / "latents")
  for split, n in (("train", 50), ("eval", 13)):
    z = r.normal(size=(n, 2, 2, 3)).astype(np.float32)
    z[:, 0, 0, 0] = np.arange(n)  # each row carries its index
    latents_data.write_split(directory, split, [z[:20], z[20:]], n, (2, 2, 3),
                             np.arange(n) % 4, np.zeros(3), np.ones(3), 4)
  cfg = {"name": "latents", "latents_dir": directory}
  stored = latents_data.load_split(directory, "train")
  assert isinstance(stored["z"], np.memmap)

  def take(iterator, k):
    return [next(iterator) for _ in range(k)]

  straight = take(data.make_train_iterator(cfg, global_batch_size=8, seed=3), 9)
  resumed = take(data.make_train_iterator(cfg, global_batch_size=8, seed=3, start_position=5), 4)
  for a, b in zip(straight[5:], resumed):
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Rows are stored rows; an epoch (6 batches of 8 from 50) has no repeats: 48 distinct
  # row indices, each batch row equal to the stored row it names.
  rows = np.concatenate([b["x"][:, 0, 0, 0] for b in straight[:6]]).astype(np.int64)
  assert len(rows) == 48 and len(set(rows.tolist())) == 48
  train_z = np.asarray(stored["z"])
  for b in straight[:6]:
    idx = b["x"][:, 0, 0, 0].astype(np.int64)
    np.testing.assert_array_equal(b["x"], train_z[idx])
    np.testing.assert_array_equal(b["label"], idx % 4)
  # The next epoch is a different order of the same rows.
  nxt = np.concatenate([b["x"][:, 0, 0, 0] for b in straight[6:9]]).astype(np.int64)
  assert not np.array_equal(nxt, rows[:24])
  halves = [take(data.make_train_iterator(cfg, global_batch_size=8, seed=3, process_index=p,
                                          process_count=2), 1)[0] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["x"] for h in halves]), straight[0]["x"])
  batches = list(data.make_eval_iterator(cfg, global_batch_size=8))
  assert [float(b["mask"].sum()) for b in batches] == [8.0, 5.0]
  with pytest.raises(FileNotFoundError, match=r"config.data.latents_dir=.*--mode=encode"):
    data.dataset_info({"name": "latents", "latents_dir": str(tmp_path / "nowhere")})
  with pytest.raises(ValueError, match=r"config.data.latents_dir: .*--mode=encode"):
    data.dataset_info({"name": "latents"})
