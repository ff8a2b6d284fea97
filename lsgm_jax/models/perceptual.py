"""The perceptual network of the first stage's loss (latent VAE paper, §3.1; LDM uses
LPIPS, Zhang et al., 2018): a VGG-style convolution stack whose ReLU features, after
unit-normalisation over channels, are compared through learned non-negative linear heads.

Weights come from an ``.npz`` file named by ``config.autoencoder.perceptual_weights_path``
(nothing is downloaded). Its layout, which also fixes the architecture:

* ``conv{b}_{c}/kernel``: float32 ``[3, 3, C_in, C_out]`` (HWIO) and ``conv{b}_{c}/bias``
  ``[C_out]`` -- convolution c (1-based) of VGG block b (1-based), 3x3, stride 1, "SAME",
  each followed by a ReLU; a 2x2 max-pool precedes every block but the first;
* ``lin{b}``: float32 ``[C_out of block b]``, the LPIPS head of block b (LPIPS's
  ``lin{b-1}.model.1.weight`` ``[1, C, 1, 1]``, flattened), tapping the ReLU after the
  last convolution of block b;
* optional ``shift`` and ``scale`` ``[C_in of conv1_1]``: input normalisation
  (x - shift) / scale of images in [-1, 1]; default LPIPS's ScalingLayer values.

LPIPS-VGG is blocks of (2, 2, 3, 3, 3) convolutions with 64, 128, 256, 512, 512 channels:
``conv{b}_{c}`` is torchvision ``vgg16.features`` layers 0, 2 | 5, 7 | 10, 12, 14 | 17, 19,
21 | 24, 26, 28 (weights transposed OIHW -> HWIO), and LPIPS's ``weights/v0.1/vgg.pth``
gives ``lin0..lin4``. A one-channel image is repeated to three channels when conv1_1
expects three.

LPIPS-AlexNet (the LPIPS paper's default, ``lpips.LPIPS(net='alex')``) has its own keys:
``alex_conv{k}/kernel|bias`` for k = 1..5 -- torchvision ``alexnet.features`` layers 0, 3,
6, 8, 10: 11x11 stride 4 padding 2 (64), 5x5 padding 2 (192), then three 3x3 padding 1
(384, 256, 256); a 3x3 stride-2 max-pool (no padding) precedes conv 2 and conv 3; the
heads ``lin1..lin5`` tap the ReLU after each convolution. ``evaluation/lpips_weights.py``
writes both layouts from the torchvision and LPIPS ``.pth`` files.
"""

from __future__ import annotations

import dataclasses
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# LPIPS ScalingLayer: ImageNet mean/std expressed for inputs in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

_CONV_KEY = re.compile(r"^conv(\d+)_(\d+)/(kernel|bias)$")
_ALEX_KEY = re.compile(r"^alex_conv(\d+)/(kernel|bias)$")
# torchvision alexnet.features: (kernel, stride, padding, max-pool before) per conv.
ALEX_LAYERS = ((11, 4, 2, False), (5, 1, 2, True), (3, 1, 1, True), (3, 1, 1, False),
               (3, 1, 1, False))


@dataclasses.dataclass(frozen=True)
class PerceptualSpec:
  """The architecture an npz file describes: convolutions per block and their widths."""

  block_widths: tuple[tuple[int, ...], ...]  # per block, output channels of each conv
  in_channels: int
  arch: str = "vgg"  # "vgg" (3x3 stacks) or "alex" (ALEX_LAYERS, one conv per block)


class VGGFeatures(nn.Module):
  """The VGG stack; returns the ReLU features at the end of each block."""

  spec: PerceptualSpec

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    features = []
    for b, widths in enumerate(self.spec.block_widths, start=1):
      if b > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for c, width in enumerate(widths, start=1):
        x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=f"conv{b}_{c}")(x))
      features.append(x)
    return features


class AlexFeatures(nn.Module):
  """AlexNet's convolutions (``ALEX_LAYERS``); returns the ReLU output of each."""

  spec: PerceptualSpec

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    features = []
    for k, ((width,), (size, stride, pad, pool)) in enumerate(
        zip(self.spec.block_widths, ALEX_LAYERS), start=1):
      if pool:  # torch MaxPool2d(3, 2): no padding, floor
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
      x = nn.relu(nn.Conv(width, (size, size), strides=(stride, stride),
                          padding=((pad, pad), (pad, pad)), name=f"alex_conv{k}")(x))
      features.append(x)
    return features


@dataclasses.dataclass(frozen=True)
class PerceptualNet:
  """A loaded perceptual network: module, frozen VGG params, heads and input scaling.

  ``params`` are device arrays: a jitted function that closes over them compiles ~2.5x
  faster than with NumPy constants (VGG16, CPU-2); passing them as an argument
  (``features(x, params)``) is faster still.
  """

  module: VGGFeatures | AlexFeatures
  params: dict
  lin: tuple[np.ndarray, ...]
  shift: np.ndarray
  scale: np.ndarray

  def features(self, x: jax.Array, params: dict | None = None) -> list[jax.Array]:
    """Block features of images ``x`` in [-1, 1], ``[B, H, W, C]``."""
    if x.shape[-1] == 1 and self.module.spec.in_channels == 3:
      x = jnp.repeat(x, 3, axis=-1)
    x = (x - self.shift) / self.scale
    return self.module.apply({"params": self.params if params is None else params}, x)


def load_perceptual_net(path: str) -> PerceptualNet:
  """Reads the npz of the module docstring.

  Args:
    path: file path of the npz.

  Returns:
    The ``PerceptualNet``.

  Raises:
    FileNotFoundError: no such file (the message names the config field).
    ValueError: the file does not follow the layout (the message says what is wrong).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.autoencoder.perceptual_weights_path={path!r}: no such "
                            "file (see lsgm_jax/models/perceptual.py for its layout)")
  with np.load(path) as f:
    arrays = {k: np.asarray(f[k], np.float32) for k in f.files}
  if any(_ALEX_KEY.match(k) for k in arrays):
    return _load_alex(path, arrays)
  convs: dict[int, dict[int, dict[str, np.ndarray]]] = {}
  for key, value in arrays.items():
    match = _CONV_KEY.match(key)
    if match:
      b, c, leaf = int(match.group(1)), int(match.group(2)), match.group(3)
      convs.setdefault(b, {}).setdefault(c, {})[leaf] = value
    elif not (re.match(r"^lin\d+$", key) or key in ("shift", "scale")):
      raise ValueError(f"{path}: unexpected array {key!r} (expected conv{{b}}_{{c}}/kernel|"
                       "bias, lin{b}, shift, scale)")
  blocks = sorted(convs)
  if not blocks or blocks != list(range(1, len(blocks) + 1)):
    raise ValueError(f"{path}: VGG blocks must be numbered 1..B, found {blocks}")
  params, widths, lin = {}, [], []
  in_channels = None
  for b in blocks:
    numbers = sorted(convs[b])
    if numbers != list(range(1, len(numbers) + 1)):
      raise ValueError(f"{path}: block {b} convolutions must be numbered 1..n, got {numbers}")
    block_widths = []
    for c in numbers:
      leaves = convs[b][c]
      if set(leaves) != {"kernel", "bias"} or leaves["kernel"].shape[:2] != (3, 3):
        raise ValueError(f"{path}: conv{b}_{c} needs a [3, 3, in, out] kernel and a bias")
      in_channels = leaves["kernel"].shape[2] if in_channels is None else in_channels
      params[f"conv{b}_{c}"] = {"kernel": jnp.asarray(leaves["kernel"]),
                                "bias": jnp.asarray(leaves["bias"])}
      block_widths.append(leaves["kernel"].shape[3])
    widths.append(tuple(block_widths))
    if f"lin{b}" not in arrays or arrays[f"lin{b}"].shape != (block_widths[-1],):
      raise ValueError(f"{path}: lin{b} must have shape ({block_widths[-1]},)")
    lin.append(_head(path, arrays, b))
  shift = arrays.get("shift", np.asarray(LPIPS_SHIFT, np.float32)[:in_channels])
  scale = arrays.get("scale", np.asarray(LPIPS_SCALE, np.float32)[:in_channels])
  spec = PerceptualSpec(tuple(widths), int(in_channels))
  return PerceptualNet(VGGFeatures(spec), params, tuple(lin), shift, scale)


def _head(path: str, arrays: dict[str, np.ndarray], b: int) -> np.ndarray:
  """LPIPS's linear head ``lin{b}``: a 1x1 convolution to one channel whose weights are
  non-negative (the LPIPS paper clamps them during training, Sec. 3)."""
  head = arrays[f"lin{b}"]
  if np.any(head < 0):
    raise ValueError(f"{path}: lin{b} has negative weights; LPIPS heads are non-negative")
  return head


def _load_alex(path: str, arrays: dict[str, np.ndarray]) -> PerceptualNet:
  """The AlexNet layout (module docstring): five convolutions of fixed geometry."""
  expected = {f"alex_conv{k}/{leaf}" for k in range(1, 6) for leaf in ("kernel", "bias")}
  expected |= {f"lin{k}" for k in range(1, 6)} | {"shift", "scale"}
  unknown = sorted(set(arrays) - expected)
  missing = sorted(k for k in expected - set(arrays) if k not in ("shift", "scale"))
  if unknown or missing:
    raise ValueError(f"{path}: AlexNet LPIPS layout needs alex_conv1..5/kernel|bias and "
                     f"lin1..5; missing {missing}, unexpected {unknown}")
  params, widths, lin = {}, [], []
  for k, (size, _, _, _) in enumerate(ALEX_LAYERS, start=1):
    kernel, bias = arrays[f"alex_conv{k}/kernel"], arrays[f"alex_conv{k}/bias"]
    if kernel.ndim != 4 or kernel.shape[:2] != (size, size) or bias.shape != kernel.shape[3:]:
      raise ValueError(f"{path}: alex_conv{k} needs a [{size}, {size}, in, out] kernel and "
                       f"an [out] bias, got {kernel.shape} and {bias.shape}")
    params[f"alex_conv{k}"] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
    widths.append((kernel.shape[3],))
    if arrays[f"lin{k}"].shape != (kernel.shape[3],):
      raise ValueError(f"{path}: lin{k} must have shape ({kernel.shape[3]},)")
    lin.append(_head(path, arrays, k))
  in_channels = arrays["alex_conv1/kernel"].shape[2]
  shift = arrays.get("shift", np.asarray(LPIPS_SHIFT, np.float32)[:in_channels])
  scale = arrays.get("scale", np.asarray(LPIPS_SCALE, np.float32)[:in_channels])
  spec = PerceptualSpec(tuple(widths), int(in_channels), arch="alex")
  return PerceptualNet(AlexFeatures(spec), params, tuple(lin), shift, scale)
