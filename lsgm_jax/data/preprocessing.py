"""Seed derivation and the numpy side of preprocessing (embedded datasets).

The same steps run in TensorFlow for the TFDS pipelines (``tfds_pipeline.py``); both
follow one order, each step from the paper that uses it:

1. random horizontal flip (train only) -- score_sde / CLD-SGM on CIFAR-10 and CelebA;
2. one of: dynamic binarization, x ~ Bernoulli(level / max_level) -- NVAE and LSGM on
   binarized MNIST and omniglot; uniform dequantization, (level + u) / (max_level + 1)
   with u ~ U[0, 1) -- score_sde / CLD-SGM likelihoods (bits/dim); or plain
   level / max_level;
3. zero padding to ``pad_to`` -- NVAE pads MNIST from 28 to 32;
4. centering to [-1, 1] (``centered``) -- score_sde; NVAE/LSGM keep [0, 1].

Every random draw comes from a stream named by a tag and a tuple of integers, so a batch
is a pure function of (seed, position) and never of process count or history.
"""

from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
  """Tags that separate random streams; the first entropy word of every stream."""

  TOY_TRAIN = 1
  TOY_EVAL = 2
  DIGITS_SPLIT = 3
  DIGITS_EPOCH = 4
  DIGITS_AUG = 5
  DIGITS_EVAL_AUG = 6
  TFDS_FILES = 7
  TFDS_SHUFFLE = 8
  TFDS_AUG = 9
  TFDS_EVAL_AUG = 10
  LATENTS_EPOCH = 11


def _entropy(tag: Stream, words: tuple[int, ...]) -> list[int]:
  # Each word becomes exactly two uint32s, so streams with one tag always have the same
  # length (numpy's SeedSequence treats [a, b] and [a, b, 0] alike) and any 64-bit or
  # negative seed is accepted.
  out = [int(tag)]
  for w in words:
    w = int(w) % 2**64
    out += [w & 0xFFFFFFFF, w >> 32]
  return out


def numpy_rng(tag: Stream, *words: int) -> np.random.Generator:
  """A numpy generator that is a pure function of (tag, words).

  Args:
    tag: which stream (training batch, eval split, augmentation, ...).
    *words: integers such as (seed, step) or (seed, epoch).

  Returns:
    A fresh ``np.random.Generator``.
  """
  return np.random.default_rng(np.random.SeedSequence(_entropy(tag, words)))


def derive_seed(tag: Stream, *words: int) -> int:
  """A non-negative 63-bit integer seed (for tf.data / stateless TF ops) from (tag, words)."""
  state = np.random.SeedSequence(_entropy(tag, words)).generate_state(1, np.uint64)
  return int(state[0] >> np.uint64(1))


def pad_images(x: np.ndarray, pad_to: int) -> np.ndarray:
  """Zero-pads NHWC images symmetrically (extra row/column at the bottom/right) to pad_to.

  Args:
    x: ``[B, H, W, C]`` images in [0, 1].
    pad_to: target height = width; 0 or the current size leaves ``x`` unchanged.

  Returns:
    ``[B, pad_to, pad_to, C]`` images (NVAE pads MNIST 28 -> 32 with black pixels).
  """
  size = x.shape[1]
  if not pad_to or pad_to == size:
    return x
  before = (pad_to - size) // 2
  after = pad_to - size - before
  return np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))


def preprocess_levels(levels: np.ndarray, *, max_level: int, rng: np.random.Generator,
                      random_flip: bool, binarize: bool, dequantize: bool, pad_to: int,
                      centered: bool) -> np.ndarray:
  """Turns integer grey levels into model inputs (the module docstring's four steps).

  Args:
    levels: ``[B, H, W, C]`` integer-valued array in {0, ..., max_level}.
    max_level: largest level (16 for the 8x8 digits, i.e. 17 levels).
    rng: source of every random draw, consumed in a fixed order (flips, then noise).
    random_flip: flip each image left-right with probability 1/2.
    binarize: dynamic binarization (NVAE); exclusive with ``dequantize``.
    dequantize: uniform dequantization (score_sde); exclusive with ``binarize``.
    pad_to: zero-pad to this size (0 = off).
    centered: map [0, 1] to [-1, 1].

  Returns:
    float32 ``[B, H', W', C]`` in [0, 1], or [-1, 1] when centered.
  """
  x = levels.astype(np.float32)
  if random_flip:
    flip = rng.random(x.shape[0]) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
  if binarize:
    x = (rng.random(x.shape, dtype=np.float32) < x / max_level).astype(np.float32)
  elif dequantize:
    x = (x + rng.random(x.shape, dtype=np.float32)) / (max_level + 1)
  else:
    x = x / max_level
  x = pad_images(x, pad_to)
  if centered:
    x = 2.0 * x - 1.0
  return x.astype(np.float32)


def to_unit_interval(x: np.ndarray, centered: bool) -> np.ndarray:
  """Inverse of the final scaling: model-space images back to [0, 1] (grids, FID).

  Args:
    x: images in [-1, 1] when ``centered`` else [0, 1].
    centered: the ``data.centered`` flag the images were produced with.

  Returns:
    ``x`` mapped to and clipped into [0, 1].
  """
  x = (x + 1.0) / 2.0 if centered else x
  return np.clip(x, 0.0, 1.0)
