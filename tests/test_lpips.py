"""LPIPS (issue 11 item 8): AlexNet and VGG16 variants against the reference ``lpips``
package's own outputs (tests/fixtures/README.md), the torch-file converter, and the
reconstruction metrics (L2, MSE, PSNR) against their definitions.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

from lsgm_jax.evaluation import lpips_weights, reconstruction
from lsgm_jax.models.perceptual import load_perceptual_net
from lsgm_jax.objectives import autoencoder_losses as losses

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
_VGG16 = ((3, 64), (64, 64), None, (64, 128), (128, 128), None, (128, 256), (256, 256),
          (256, 256), None, (256, 512), (512, 512), (512, 512), None, (512, 512),
          (512, 512), (512, 512))
_TAPS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _torchvision_convs(net: str) -> dict[int, tuple[int, int, int]]:
  """torchvision ``features`` index -> (out, in, kernel) of each convolution."""
  if net == "alex":
    return {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3),
            10: (256, 256, 3)}
  out, index = {}, 0
  for layer in _VGG16:
    if layer is None:  # max-pool
      index += 1
      continue
    out[index] = (layer[1], layer[0], 3)
    index += 2  # conv, ReLU
  return out


def _seeded_weights(net: str, seed: int):
  """torchvision-layout backbone and LPIPS-layout heads, the golden file's weights."""
  rng = np.random.default_rng(seed)
  backbone = {}
  for i, (o, c, k) in sorted(_torchvision_convs(net).items()):
    backbone[f"features.{i}.weight"] = (rng.standard_normal((o, c, k, k))
                                        * np.sqrt(2.0 / (c * k * k))).astype(np.float32)
    backbone[f"features.{i}.bias"] = (0.05 * rng.standard_normal(o)).astype(np.float32)
  heads = {f"lin{k}.model.1.weight":
           (0.1 * np.abs(rng.standard_normal(c))).astype(np.float32).reshape(1, c, 1, 1)
           for k, c in enumerate(_TAPS[net])}
  return backbone, heads


def _images():
  rng = np.random.default_rng(7)
  x = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  return x, y


def _net(tmp_path, net, heads=None):
  backbone, seeded_heads = _seeded_weights(net, {"alex": 11, "vgg": 12}[net])
  arrays = lpips_weights.backbone_arrays(backbone, net)
  arrays.update(lpips_weights.head_arrays(heads or seeded_heads))
  path = str(tmp_path / f"lpips_{net}.npz")
  np.savez(path, **arrays)
  return load_perceptual_net(path)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_reference_package(tmp_path, net):
  golden = np.load(os.path.join(FIXTURES, "lpips_golden.npz"))
  if net == "alex":  # heads through the torch-free reader, from a real torch.save file
    from lsgm_jax.models.autoencoder_convert import read_torch_file
    heads = read_torch_file(os.path.join(FIXTURES, "lpips_alex_heads_seeded.pth"))
    np.testing.assert_array_equal(
        np.asarray(heads["lin2.model.1.weight"]),
        _seeded_weights("alex", 11)[1]["lin2.model.1.weight"])
  else:
    heads = None
  lpips_net = _net(tmp_path, net, heads)
  assert lpips_net.module.spec.arch == net
  x, y = _images()
  distance = functools.partial(
      jax.jit(lambda p, a, b: reconstruction.lpips(lpips_net, a, b, params=p)),
      lpips_net.params)
  got = np.asarray(distance((x + 1) / 2, (y + 1) / 2))
  assert got.shape == (3,) and np.all(got > 0.01)
  np.testing.assert_allclose(got, golden[f"lpips_{net}"], rtol=2e-5)
  np.testing.assert_allclose(distance((x + 1) / 2, (x + 1) / 2),
                             golden[f"lpips_{net}_self"], atol=1e-7)


def test_converter_reads_both_key_layouts_and_rejects_bad_files():
  backbone, heads = _seeded_weights("alex", 11)
  # A whole lpips.LPIPS state dict names the convolutions net.slice{s}.{torchvision i}.
  slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
  as_lpips = {f"net.slice{slices[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
              for k, v in backbone.items()}
  as_lpips.update({f"lins.{k}.model.1.weight": v for k, v in enumerate(heads.values())})
  a = lpips_weights.backbone_arrays(backbone, "alex")
  b = lpips_weights.backbone_arrays(as_lpips, "alex")
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert a["alex_conv1/kernel"].shape == (11, 11, 3, 64)  # OIHW -> HWIO
  np.testing.assert_array_equal(a["alex_conv2/kernel"][1, 2, :, 5],
                                backbone["features.3.weight"][5, :, 1, 2])
  assert np.array_equal(lpips_weights.head_arrays(as_lpips)["lin5"],
                        heads["lin4.model.1.weight"].reshape(-1))
  with pytest.raises(ValueError, match=r"features\.10\.weight"):
    lpips_weights.backbone_arrays({k: v for k, v in backbone.items() if "10" not in k}, "alex")
  with pytest.raises(ValueError, match=r"lin0\.\.lin4"):
    lpips_weights.head_arrays({"lin0.model.1.weight": np.ones((1, 64, 1, 1))})


def test_negative_heads_are_refused(tmp_path):
  backbone, heads = _seeded_weights("alex", 11)
  arrays = lpips_weights.backbone_arrays(backbone, "alex")
  arrays.update(lpips_weights.head_arrays(heads))
  arrays["lin3"] = -arrays["lin3"]
  np.savez(tmp_path / "neg.npz", **arrays)
  with pytest.raises(ValueError, match="lin3 has negative weights"):
    load_perceptual_net(str(tmp_path / "neg.npz"))


def test_l2_mse_psnr_definitions():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
  r = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  diff = (x - r).reshape(4, -1).astype(np.float64)
  mse = np.mean(diff ** 2, axis=1)
  np.testing.assert_allclose(losses.mse(x, r), mse, rtol=1e-5)
  np.testing.assert_allclose(losses.psnr(x, r, 1.0), 10 * np.log10(1.0 / mse), rtol=1e-5)
  from lsgm_jax.objectives import score_vae as sv_obj
  np.testing.assert_allclose(sv_obj.per_image_l2(x, r), np.linalg.norm(diff, axis=1),
                             rtol=1e-5)
