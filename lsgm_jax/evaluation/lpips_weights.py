"""LPIPS weights from the published PyTorch files -> the npz of ``models/perceptual.py``.

LPIPS (Zhang et al., 2018) is a torchvision backbone (ImageNet-trained VGG16 or AlexNet)
plus small linear heads trained on human judgements. Both come as PyTorch files, read
here WITHOUT torch (``models.autoencoder_convert.read_torch_file``, the restricted
unpickler):

* the backbone: torchvision's ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``
  (keys ``features.{i}.weight|bias``), or a whole ``lpips.LPIPS`` state dict (keys
  ``net.slice{s}.{i}.weight|bias``, where ``i`` is still the torchvision index);
* the heads: the ``lpips`` package's ``weights/v0.1/{vgg,alex}.pth`` (keys
  ``lin{k}.model.1.weight`` ``[1, C, 1, 1]``), or the same keys inside a whole
  ``lpips.LPIPS`` state dict (also ``lins.{k}.model.1.weight``).

Usage (nothing is downloaded; give the files' paths)::

  python -m lsgm_jax.evaluation.lpips_weights --net=alex \\
      --backbone=alexnet-owt-7be5be79.pth --heads=alex.pth --out=lpips_alex.npz

then point ``config.eval.lpips_weights_path`` (or the ScoreVAE / autoencoder fields) at
the npz.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

# torchvision ``features`` indices of the convolutions, grouped by the LPIPS tap they feed.
TORCHVISION_CONVS = {
    "vgg": ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)),
    "alex": ((0,), (3,), (6,), (8,), (10,)),
}
_BACKBONE_KEY = re.compile(r"^(?:module\.)?(?:features|net\.slice\d+)\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^(?:module\.)?(?:lin|lins\.)(\d+)\.model\.1\.weight$")


def _as_numpy(value) -> np.ndarray:
  return np.asarray(value, np.float32)


def backbone_arrays(state_dict: Mapping[str, np.ndarray], net: str) -> dict[str, np.ndarray]:
  """npz arrays of the backbone: OIHW weights -> HWIO kernels under the layout's names."""
  if net not in TORCHVISION_CONVS:
    raise ValueError(f"net={net!r}: one of {sorted(TORCHVISION_CONVS)}")
  found: dict[tuple[int, str], np.ndarray] = {}
  for key, value in state_dict.items():
    match = _BACKBONE_KEY.match(key)
    if match:
      found[(int(match.group(1)), match.group(2))] = _as_numpy(value)
  out = {}
  for b, indices in enumerate(TORCHVISION_CONVS[net], start=1):
    for c, index in enumerate(indices, start=1):
      name = f"alex_conv{b}" if net == "alex" else f"conv{b}_{c}"
      if (index, "weight") not in found or (index, "bias") not in found:
        raise ValueError(f"the backbone file has no features.{index}.weight/bias "
                         f"(torchvision {net} convolution {name})")
      out[f"{name}/kernel"] = np.transpose(found[(index, "weight")], (2, 3, 1, 0))
      out[f"{name}/bias"] = found[(index, "bias")]
  return out


def head_arrays(state_dict: Mapping[str, np.ndarray], num_taps: int = 5
                ) -> dict[str, np.ndarray]:
  """npz arrays ``lin1..lin5`` from LPIPS's ``lin{k}.model.1.weight`` (k = 0..4)."""
  heads = {}
  for key, value in state_dict.items():
    match = _HEAD_KEY.match(key)
    if match:
      heads[int(match.group(1))] = _as_numpy(value).reshape(-1)
  if sorted(heads) != list(range(num_taps)):
    raise ValueError(f"the heads file has lin{sorted(heads)}; LPIPS needs lin0..lin{num_taps - 1}"
                     " (keys lin{k}.model.1.weight)")
  return {f"lin{k + 1}": heads[k] for k in range(num_taps)}


def convert(backbone_path: str, heads_path: str, net: str) -> dict[str, np.ndarray]:
  """The npz arrays of LPIPS-``net`` from the two PyTorch files (may be the same file)."""
  from lsgm_jax.models.autoencoder_convert import read_torch_file  # pylint: disable=g-import-not-at-top

  def state_dict(path):
    obj = read_torch_file(path)
    obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict):
      raise ValueError(f"{path}: not a PyTorch state dict")
    return obj

  arrays = backbone_arrays(state_dict(backbone_path), net)
  arrays.update(head_arrays(state_dict(heads_path)))
  return arrays


def main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--net", choices=sorted(TORCHVISION_CONVS), required=True)
  parser.add_argument("--backbone", required=True, help="torchvision .pth (or LPIPS state dict)")
  parser.add_argument("--heads", required=True, help="lpips weights/v0.1/<net>.pth")
  parser.add_argument("--out", required=True, help="npz to write")
  args = parser.parse_args(argv)
  arrays = convert(args.backbone, args.heads, args.net)
  from lsgm_jax.models.perceptual import load_perceptual_net  # pylint: disable=g-import-not-at-top
  np.savez(args.out, **arrays)
  load_perceptual_net(args.out)  # checks the layout it wrote
  print(f"wrote {args.out}: LPIPS-{args.net}, {len(arrays)} arrays")


if __name__ == "__main__":
  main()
