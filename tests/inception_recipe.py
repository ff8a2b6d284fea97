"""The seeded random InceptionV3 weights of the golden test (tests/test_inception.py).

Every state-dict tensor is drawn from ``np.random.default_rng([seed, crc32(name)])``, so
the recipe does not depend on key order. Scales keep activations O(1) through the 94
BasicConv2d layers: He-normal conv weights, BatchNorm scale U(0.8, 1.2), bias N(0, 0.1),
running mean N(0, 0.1), running var U(0.8, 1.2); fc weight N(0, 1/2048), bias N(0, 0.1).
The golden arrays in tests/fixtures/inception_golden.npz were computed from these
weights by pytorch-fid's own InceptionV3 (see tests/fixtures/README.md).
"""

from __future__ import annotations

import zlib

import numpy as np

SEED = 20151205


def tensor(name: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  leaf = name.rsplit(".", 1)[-1]
  if name.startswith("fc."):
    if leaf == "weight":
      return rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape).astype(np.float32)
    return rng.normal(0.0, 0.1, shape).astype(np.float32)
  if name.endswith("conv.weight"):
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
  if leaf in ("weight", "running_var"):
    return rng.uniform(0.8, 1.2, shape).astype(np.float32)
  if leaf in ("bias", "running_mean"):
    return rng.normal(0.0, 0.1, shape).astype(np.float32)
  raise ValueError(name)


def state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
  """``{name: array}`` for the torchvision names and shapes in ``shapes``."""
  return {name: tensor(name, tuple(shape), seed) for name, shape in shapes.items()}


def images(size: int, num: int = 2, seed: int = 0) -> np.ndarray:
  """uint8 NHWC test images: smooth gradients plus noise (not only noise, so that the
  resize path is exercised on structure)."""
  rng = np.random.default_rng([seed, size])
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  base = np.stack([xx, yy, (xx + yy) / 2], -1)[None] * 200.0
  noise = rng.uniform(0.0, 55.0, (num, size, size, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)
