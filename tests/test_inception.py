"""The FID InceptionV3: equality with pytorch-fid's model (golden arrays), weights by path
without torch, resize equal to F.interpolate / TF1 legacy bilinear, quantisation.

The golden arrays (tests/fixtures/inception_golden.npz) are pytorch-fid 0.3.0's
``InceptionV3`` (resize_input, normalize_input) and its fc layer, on CPU torch, with the
seeded weights of ``tests/inception_recipe.py``; see tests/fixtures/README.md.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.evaluation import inception
from lsgm_jax.evaluation import inception_weights as iw
from lsgm_jax.models import autoencoder_convert
from tests import inception_recipe as recipe

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _shapes() -> dict[str, tuple[int, ...]]:
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), iw.abstract_variables())
  return {k: v.shape for k, v in iw.variables_to_state_dict(zeros).items()}


@pytest.fixture(scope="module")
def recipe_state_dict():
  return recipe.state_dict(_shapes())


@pytest.fixture(scope="module")
def extractor(recipe_state_dict, tmp_path_factory):
  """The public API on an .npz of the recipe weights (shared: one compile of the net)."""
  path = str(tmp_path_factory.mktemp("inception") / "weights.npz")
  np.savez(path, **recipe_state_dict)
  # One device: the batch of 2 is not padded to the 8 fake devices (CPU time).
  return inception.feature_extractor(path, resize="torch", normalize="torch", batch_size=2,
                                     devices=jax.devices()[:1])


def test_parameter_count_and_names_match_pytorch_fid(recipe_state_dict):
  # pytorch-fid's fid_inception_v3(): 23,885,392 parameters and buffers (no aux head).
  assert len(recipe_state_dict) == 472
  assert sum(v.size for v in recipe_state_dict.values()) == 23_885_392
  assert recipe_state_dict["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert recipe_state_dict["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
  assert recipe_state_dict["fc.weight"].shape == (1008, 2048)


@pytest.mark.parametrize("size", [32, 64, 299, 512])
def test_features_equal_pytorch_fid(extractor, size):
  golden = np.load(os.path.join(FIXTURES, "inception_golden.npz"))
  images = recipe.images(size, 1 if size == 512 else 2)
  out = extractor(images)
  assert out["pool3"].shape == (len(images), 2048) and out["pool3"].dtype == np.float32
  assert out["logits"].shape == (len(images), 1008)
  assert np.max(np.abs(out["pool3"] - golden[f"pool3_{size}"])) <= 1e-4
  assert np.max(np.abs(out["logits"] - golden[f"logits_{size}"])) <= 1e-4
  assert np.std(golden[f"pool3_{size}"]) > 0.3  # the comparison is not of near-zeros


def test_grey_images_are_tiled_and_ragged_batches_padded(extractor):
  golden = np.load(os.path.join(FIXTURES, "inception_golden.npz"))
  grey = recipe.images(32, 2)[..., :1]
  out = extractor(np.concatenate([grey, grey[:1]]))  # 3 images at batch 2: one padded
  np.testing.assert_allclose(out["pool3"][:2], golden["pool3_gray32"], atol=1e-4)
  np.testing.assert_allclose(out["pool3"][2], out["pool3"][0], atol=1e-6)


def test_bias_free_logits_and_float_pixels(extractor):
  variables = extractor._variables
  images = recipe.images(32, 2)
  feats = extractor.device_batch(jax.device_put(images, extractor._sharding))
  bias = np.asarray(variables["params"]["fc"]["bias"])
  np.testing.assert_allclose(np.asarray(feats["logits_unbiased"]),
                             np.asarray(feats["logits"]) - bias, atol=1e-5)
  # Float pixels (quantize="none") give the same features as the same uint8 values.
  np.testing.assert_allclose(extractor(images.astype(np.float32))["pool3"],
                             extractor(images)["pool3"], atol=1e-6)


# --- weights by path ----------------------------------------------------------------------

def _tiny_expected():
  return {"block.conv.weight": recipe.tensor("block.conv.weight", (4, 3, 3, 3)),
          "block.bn.running_var": recipe.tensor("block.bn.running_var", (4,)),
          "fc.weight": recipe.tensor("fc.weight", (3, 5))}


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_torch_files_read_without_torch(layout):
  """Files written by torch 2.14's ``torch.save`` (legacy: _use_new_zipfile_serialization
  =False, the layout of pytorch-fid's 2019 weights file): float tensors, a transposed
  (non-contiguous) one, a view at an offset into a shared int64 storage, a counter."""
  state = autoencoder_convert.read_torch_file(
      os.path.join(FIXTURES, f"tiny_state_{layout}.pth"))
  for key, value in _tiny_expected().items():
    np.testing.assert_array_equal(state[key], value)
  np.testing.assert_array_equal(state["ids"], [2, 3, 4])
  assert state["ids"].dtype == np.int64 and int(state["block.bn.num_batches_tracked"]) == 7


def _write_safetensors(path, tensors):
  header, chunks, offset = {}, [], 0
  for name, value in tensors.items():
    raw = np.ascontiguousarray(value, "<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def test_weight_formats_agree_and_counters_and_fc_are_optional(recipe_state_dict, tmp_path):
  counters = {k.rsplit(".", 1)[0] + ".num_batches_tracked": np.array(3, np.int64)
              for k in recipe_state_dict if k.endswith("running_mean")}
  npz = str(tmp_path / "w.npz")
  np.savez(npz, **recipe_state_dict, **counters)
  st = str(tmp_path / "w.safetensors")
  _write_safetensors(st, recipe_state_dict)
  a, sha_a = iw.load(npz)
  b, sha_b = iw.load(st)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert len(sha_a) == 64 and sha_a != sha_b and sha_a == iw.file_sha256(npz)
  assert iw.has_logits(a)
  no_fc = {k: v for k, v in recipe_state_dict.items() if not k.startswith("fc.")}
  variables = iw.state_dict_to_variables(no_fc)
  assert not iw.has_logits(variables)
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], a["batch_stats"])
  # The inverse mapping round-trips.
  back = iw.variables_to_state_dict(a)
  assert set(back) == set(recipe_state_dict)
  np.testing.assert_array_equal(back["Mixed_6b.branch7x7_2.conv.weight"],
                                recipe_state_dict["Mixed_6b.branch7x7_2.conv.weight"])


def test_weight_errors_name_missing_unexpected_and_misshaped_keys(recipe_state_dict):
  bad = dict(recipe_state_dict)
  del bad["Mixed_5b.branch1x1.conv.weight"]
  bad["AuxLogits.fc.weight"] = np.zeros((3,), np.float32)
  bad["Mixed_7c.branch_pool.bn.bias"] = np.zeros((7,), np.float32)
  with pytest.raises(iw.WeightsError) as info:
    iw.state_dict_to_variables(bad)
  message = str(info.value)
  assert "\n" not in message
  assert "1 missing ['Mixed_5b.branch1x1.conv.weight']" in message
  assert "1 unexpected ['AuxLogits.fc.weight']" in message
  assert "1 mis-shaped ['Mixed_7c.branch_pool.bn.bias (7,)']" in message
  with pytest.raises(ValueError, match="config.eval.inception_weights"):
    inception.feature_extractor("")
  with pytest.raises(FileNotFoundError, match="not found"):
    iw.load("/nonexistent/pt_inception.pth")


# --- resize and quantisation ----------------------------------------------------------------

def _reference_interpolate(x: np.ndarray, size: int, mode: str) -> np.ndarray:
  """NumPy transcription of the two reference kernels, per output pixel: torch's
  upsample_bilinear2d (align_corners=False, antialias=False; float32 source index
  clamped at 0) and TF1's legacy resize_bilinear (source = dst * scale, float32)."""
  _, h, w, _ = x.shape

  def taps(in_size):
    scale = np.float32(in_size) / np.float32(size)
    out = []
    for i in range(size):
      if mode == "torch":
        src = max(scale * (np.float32(i) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
      else:
        src = np.float32(i) * scale
      i0 = min(int(np.floor(src)), in_size - 1)
      i1 = i0 + 1 if i0 < in_size - 1 else i0
      lam = np.float32(src - np.float32(i0))
      out.append((i0, i1, np.float32(1) - lam, lam))
    return out

  (y0, y1, hy0, hy1), (x0, x1, wx0, wx1) = (
      [np.asarray(v) for v in zip(*taps(h))], [np.asarray(v) for v in zip(*taps(w))])
  hy0, hy1 = hy0[None, :, None, None], hy1[None, :, None, None]
  wx0, wx1 = wx0[None, None, :, None], wx1[None, None, :, None]
  rows0, rows1 = x[:, y0], x[:, y1]
  return (hy0 * (wx0 * rows0[:, :, x0] + wx1 * rows0[:, :, x1])
          + hy1 * (wx0 * rows1[:, :, x0] + wx1 * rows1[:, :, x1]))


@pytest.mark.parametrize("mode,in_size,out_size", [
    ("torch", 32, 299), ("torch", 512, 299), ("torch", 7, 5), ("tf1", 32, 299),
    ("tf1", 512, 299)])
def test_resize_equals_reference_kernels(mode, in_size, out_size):
  x = recipe.images(in_size, 1).astype(np.float32) / 255.0
  ours = np.asarray(inception.resize(jnp.asarray(x), out_size, mode))
  np.testing.assert_allclose(ours, _reference_interpolate(x, out_size, mode), atol=1e-6)


def test_resize_never_antialiases():
  # Shrinking 512 -> 299 with an antialiasing filter (jax.image.resize's default) would
  # differ by far more than the tolerance above; the two-tap kernel is what we compute.
  x = jnp.asarray(recipe.images(512, 1).astype(np.float32) / 255.0)
  ours = inception.resize(x, 299, "torch")
  antialiased = jax.image.resize(x, (1, 299, 299, 3), "bilinear", antialias=True)
  assert float(jnp.max(jnp.abs(ours - antialiased))) > 1e-2
  weights = inception.resize_matrix(512, 299, "torch")
  assert np.all(np.count_nonzero(weights, axis=1) <= 2)
  np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-7)


def test_quantisation_modes():
  x = np.array([-1.0, -0.999, 0.0, 0.50196, 0.999, 1.2], np.float32)
  pixels = (x + 1) / 2 * 255
  np.testing.assert_array_equal(inception.to_pixels(x, centered=True, quantize="round"),
                                np.clip(np.round(pixels), 0, 255).astype(np.uint8))
  np.testing.assert_array_equal(inception.to_pixels(x, centered=True, quantize="floor"),
                                np.clip(pixels, 0, 255).astype(np.uint8))
  none = inception.to_pixels(x, centered=True, quantize="none")
  assert none.dtype == np.float32
  np.testing.assert_allclose(none, np.clip(pixels, 0, 255), rtol=1e-6)
  assert inception.to_pixels(np.float32([0.5]), centered=False, quantize="round")[0] == 128
  with pytest.raises(ValueError, match="quantize"):
    inception.to_pixels(x, centered=True, quantize="ceil")
