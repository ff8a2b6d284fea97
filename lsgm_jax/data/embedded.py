"""Datasets that need no download: CLD-SGM's 2-D toys and scikit-learn's 8x8 digits.

Everything here is in-memory numpy and deterministic: global batch k is a pure function
of (seed, k), and process p of P takes rows [p * L, (p + 1) * L) of it (L = B / P), so P
processes together see exactly the batches one process sees.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import numpy as np

from lsgm_jax.data import catalog
from lsgm_jax.data.config import DataConfig
from lsgm_jax.data.preprocessing import Stream, numpy_rng, preprocess_levels

Batch = dict[str, np.ndarray]

# Multimodal swiss roll (CLD-SGM toy experiments, util/toy_data.py): five equally likely
# copies of scikit-learn's swiss roll (its x-z plane, noise 0.2 added before scaling),
# scaled by 0.01, one at the origin and four shifted to (+-0.8, +-0.8).
SWISS_ROLL_NOISE = 0.2
SWISS_ROLL_SCALE = 0.01
SWISS_ROLL_OFFSETS = np.array(
    [[0.0, 0.0], [0.8, 0.8], [0.8, -0.8], [-0.8, -0.8], [-0.8, 0.8]])

# "Diamond" (CLD-SGM toy experiments): a 3x3 grid of isotropic Gaussians on
# [-0.5, 0.5]^2, rotated by 45 degrees, equal weights, standard deviation 0.04.
DIAMOND_WIDTH = 3
DIAMOND_BOUND = 0.5
DIAMOND_STD = 0.04


def swiss_roll_sample(rng: np.random.Generator, num: int) -> np.ndarray:
  """Draws ``num`` points of the multimodal swiss roll.

  Args:
    rng: numpy generator.
    num: number of points.

  Returns:
    float32 ``[num, 2]``.
  """
  component = rng.integers(0, len(SWISS_ROLL_OFFSETS), num)
  # scikit-learn's make_swiss_roll: angle t = 1.5 pi (1 + 2 u), point t (cos t, sin t).
  t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(num))
  roll = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1)
  roll = roll + SWISS_ROLL_NOISE * rng.standard_normal((num, 2))
  return (SWISS_ROLL_SCALE * roll + SWISS_ROLL_OFFSETS[component]).astype(np.float32)


def diamond_means() -> np.ndarray:
  """The nine mode centres of the diamond mixture, ``[9, 2]``."""
  ticks = np.linspace(-DIAMOND_BOUND, DIAMOND_BOUND, DIAMOND_WIDTH)
  grid = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 2)
  c = s = np.sqrt(0.5)  # cos and sin of 45 degrees
  return grid @ np.array([[c, -s], [s, c]])


def diamond_sample(rng: np.random.Generator, num: int) -> np.ndarray:
  """Draws ``num`` points of the 3x3 diamond Gaussian mixture.

  Args:
    rng: numpy generator.
    num: number of points.

  Returns:
    float32 ``[num, 2]``.
  """
  means = diamond_means()
  component = rng.integers(0, len(means), num)
  points = means[component] + DIAMOND_STD * rng.standard_normal((num, 2))
  return points.astype(np.float32)


TOY_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "swiss_roll": swiss_roll_sample,
    "diamond": diamond_sample,
}


@functools.lru_cache(maxsize=4)
def toy_eval_set(name: str, num: int) -> np.ndarray:
  """The fixed held-out toy set: independent of the training seed, read-only."""
  points = TOY_SAMPLERS[name](numpy_rng(Stream.TOY_EVAL, num), num)
  points.setflags(write=False)
  return points


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits, split once by a constant-seed permutation.

  Returns:
    (train_levels, train_labels, eval_levels, eval_labels): levels are int64
    ``[N, 8, 8, 1]`` in {0, ..., 16}, labels int32 ``[N]``; 1500 train, 297 eval.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (slow import)

  digits = datasets.load_digits()
  levels = np.rint(digits.images).astype(np.int64)[..., None]
  labels = digits.target.astype(np.int32)
  order = numpy_rng(Stream.DIGITS_SPLIT).permutation(len(labels))
  train, held_out = order[:catalog.DIGITS_NUM_TRAIN], order[catalog.DIGITS_NUM_TRAIN:]
  arrays = (levels[train], labels[train], levels[held_out], labels[held_out])
  for a in arrays:
    a.setflags(write=False)
  return arrays


def _digits_preprocess(cfg: DataConfig, levels: np.ndarray, rng: np.random.Generator,
                       train: bool) -> np.ndarray:
  return preprocess_levels(
      levels, max_level=catalog.DIGITS_MAX_LEVEL, rng=rng,
      random_flip=train and cfg.random_flip, binarize=cfg.binarize,
      dequantize=cfg.dequantize, pad_to=cfg.pad_to, centered=cfg.centered)


def _global_train_batch(cfg: DataConfig, seed: int, step: int, global_batch_size: int,
                        epoch_order: Callable[[int], np.ndarray]) -> Batch:
  if cfg.is_toy:
    x = TOY_SAMPLERS[cfg.name](numpy_rng(Stream.TOY_TRAIN, seed, step), global_batch_size)
    return {"x": x, "label": np.zeros(global_batch_size, np.int32)}
  levels, labels, _, _ = digits_split()
  steps_per_epoch = len(labels) // global_batch_size
  epoch, within = divmod(step, steps_per_epoch)
  rows = epoch_order(epoch)[within * global_batch_size:(within + 1) * global_batch_size]
  x = _digits_preprocess(cfg, levels[rows], numpy_rng(Stream.DIGITS_AUG, seed, step), True)
  return {"x": x, "label": labels[rows]}


def train_iterator(cfg: DataConfig, *, global_batch_size: int, seed: int,
                   start_position: int, local_batch_size: int,
                   process_index: int) -> Iterator[Batch]:
  """This process's rows of global batches ``start_position, start_position + 1, ...``.

  Args:
    cfg: validated data config of an embedded dataset.
    global_batch_size: examples per global batch.
    seed: training seed.
    start_position: global batches already consumed.
    local_batch_size: ``global_batch_size // process_count``.
    process_index: this process.

  Returns:
    An infinite iterator of ``{"x": float32 [L, ...], "label": int32 [L]}``.
  """
  if cfg.name == "digits" and global_batch_size > catalog.DIGITS_NUM_TRAIN:
    raise ValueError(f"global batch size {global_batch_size} exceeds the "
                     f"{catalog.DIGITS_NUM_TRAIN} digits training examples")

  @functools.lru_cache(maxsize=2)
  def epoch_order(epoch: int) -> np.ndarray:
    # A fresh permutation per epoch; the remainder of each epoch is dropped.
    return numpy_rng(Stream.DIGITS_EPOCH, seed, epoch).permutation(catalog.DIGITS_NUM_TRAIN)

  lo = process_index * local_batch_size

  def generate() -> Iterator[Batch]:
    step = start_position
    while True:
      batch = _global_train_batch(cfg, seed, step, global_batch_size, epoch_order)
      yield {k: np.ascontiguousarray(v[lo:lo + local_batch_size]) for k, v in batch.items()}
      step += 1

  return generate()


def _eval_arrays(cfg: DataConfig, split: str = "eval") -> tuple[np.ndarray, np.ndarray]:
  if cfg.is_toy:
    if split != "eval":
      raise ValueError(f"{cfg.name!r} is an infinite stream: it has no training split to "
                       "pass over once")
    x = toy_eval_set(cfg.name, cfg.num_toy_eval)
    return x, np.zeros(len(x), np.int32)
  train_levels, train_labels, levels, labels = digits_split()
  if split == "train":  # one pass over the training split (encoding it once)
    levels, labels = train_levels, train_labels
  # One fixed draw for the whole split: the same noise whatever the batch layout.
  return _digits_preprocess(cfg, levels, numpy_rng(Stream.DIGITS_EVAL_AUG), False), labels


def padded_batches(x: np.ndarray, label: np.ndarray, *, global_batch_size: int,
                   local_batch_size: int, process_index: int) -> Iterator[Batch]:
  """One pass over (x, label) in global batches; the last one zero-padded with mask 0.

  Args:
    x: ``[N, ...]`` examples, already preprocessed.
    label: int32 ``[N]``.
    global_batch_size: rows per global batch.
    local_batch_size: rows this process takes from each global batch.
    process_index: this process; it takes rows [p * L, (p + 1) * L).

  Returns:
    An iterator of ``{"x", "label", "mask"}`` local batches; every process yields the
    same number of batches, ceil(N / global_batch_size).
  """
  num = len(x)
  for start in range(0, num, global_batch_size):
    lo = min(start + process_index * local_batch_size, num)
    hi = min(lo + local_batch_size, num)
    real = hi - lo
    pad = local_batch_size - real
    xs = np.concatenate([x[lo:hi], np.zeros((pad,) + x.shape[1:], x.dtype)])
    labels = np.concatenate([label[lo:hi], np.zeros(pad, np.int32)]).astype(np.int32)
    mask = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
    yield {"x": xs.astype(np.float32), "label": labels, "mask": mask}


def eval_iterator(cfg: DataConfig, *, global_batch_size: int, local_batch_size: int,
                  process_index: int, split: str = "eval") -> Iterator[Batch]:
  """One padded pass over the fixed held-out (or, ``split="train"``, training) split."""
  x, label = _eval_arrays(cfg, split)
  return padded_batches(x, label, global_batch_size=global_batch_size,
                        local_batch_size=local_batch_size, process_index=process_index)
