"""TFDS input pipelines: per-process shards, seeded shuffles, resumable by position.

Importing this module hides every GPU/TPU from TensorFlow, so tf.data never takes
accelerator memory from JAX. Only ``lsgm_jax.data.pipeline`` imports it, and only when
a TFDS dataset is asked for, so runs on the embedded data never import TensorFlow.

Training reads epoch e of process p with file and buffer shuffles seeded by
(seed, e, p); each epoch keeps ``steps_per_epoch * L`` examples (remainder dropped,
the same count on every process), numbers them, and draws every example's flip and
noise from a stateless seed (stream, example number). Resuming at global batch k is
epoch k // steps_per_epoch with the first (k % steps_per_epoch) * L examples skipped
before decoding, which reproduces the uninterrupted stream bitwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

from absl import logging
import numpy as np
import tensorflow as tf


def _hide_accelerators_from_tf() -> None:
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError) as e:  # already initialised, or no such device type
      logging.warning("could not hide %s devices from TensorFlow: %s", kind, e)


_hide_accelerators_from_tf()

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from lsgm_jax.data import catalog  # pylint: disable=wrong-import-position
from lsgm_jax.data.config import DataConfig  # pylint: disable=wrong-import-position
from lsgm_jax.data.preprocessing import Stream, derive_seed  # pylint: disable=wrong-import-position

Batch = dict[str, np.ndarray]
AUTOTUNE = tf.data.AUTOTUNE


def _data_dir_root(cfg: DataConfig) -> str:
  return cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR


def _not_prepared(spec: catalog.TfdsSpec, builder: tfds.core.DatasetBuilder,
                  cfg: DataConfig) -> FileNotFoundError:
  root = _data_dir_root(cfg)
  manual = ""
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    catalog_page = spec.builder.split("/")[0]
    manual = (f" (manual download first: put the archives in {root}/downloads/manual, see "
              f"https://www.tensorflow.org/datasets/catalog/{catalog_page})")
  return FileNotFoundError(
      f"dataset '{spec.builder}' is not prepared in {root}: run "
      f"`tfds build {spec.builder} --data_dir={root}`{manual}")


def _open_builder(spec: catalog.TfdsSpec, cfg: DataConfig) -> tfds.core.DatasetBuilder:
  try:
    return tfds.builder(spec.builder, data_dir=cfg.data_dir or None)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f"tensorflow-datasets {tfds.__version__} has no builder "
                     f"'{spec.builder}': {e}") from e


def _read(builder: tfds.core.DatasetBuilder, spec: catalog.TfdsSpec, cfg: DataConfig,
          split, shuffle_seed: int | None) -> tf.data.Dataset:
  """Undecoded examples of ``split``; files shuffled with ``shuffle_seed`` unless None."""
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, shuffle_seed=shuffle_seed)
  try:
    return builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()})
  except AssertionError as e:  # TFDS: "could not find data in <data_dir>"
    raise _not_prepared(spec, builder, cfg) from e


def check_prepared(cfg: DataConfig) -> None:
  """Raises what ``train_iterator`` would for an unprepared dataset (FileNotFoundError
  naming the ``tfds build`` step) without building a pipeline."""
  spec = catalog.TFDS_DATASETS[cfg.name]
  _read(_open_builder(spec, cfg), spec, cfg, spec.train_split, None)


def _num_examples(builder: tfds.core.DatasetBuilder, ds: tf.data.Dataset, split) -> int:
  count = int(ds.cardinality())
  if count >= 0:
    return count
  return int(builder.info.splits[split].num_examples)


def _resize_shorter_and_center_crop(x: tf.Tensor, size: int) -> tf.Tensor:
  # ADM / score_sde LSUN and ImageNet: scale the shorter side to `size`, crop the centre.
  shape = tf.shape(x)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = size / tf.minimum(h, w)
  new_h = tf.maximum(size, tf.cast(tf.round(h * scale), tf.int32))
  new_w = tf.maximum(size, tf.cast(tf.round(w * scale), tf.int32))
  x = tf.image.resize(x, tf.stack([new_h, new_w]), method="bicubic", antialias=True)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return x[top:top + size, left:left + size]


def _example_fn(spec: catalog.TfdsSpec, cfg: DataConfig, image_feature, *,
                flip: bool, noise_seeds: tuple[int, int], with_mask: bool):
  """Builds (index, raw example) -> {"x", "label"[, "mask"]}; see preprocessing.py's order."""
  size = cfg.resolved_image_size
  level = float(spec.max_level)

  def uniform(which: int, index: tf.Tensor, shape) -> tf.Tensor:
    seed = tf.stack([tf.constant(noise_seeds[which], tf.int64), index])
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)

  def fn(index: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    x = tf.cast(image_feature.decode_example(example["image"]), tf.float32)
    if spec.max_level == 1:
      x = tf.cast(x > 0, tf.float32)  # binarized MNIST stores 0/1; any nonzero is ink
    if spec.channels == 1 and image_feature.shape[-1] != 1:
      x = tf.reduce_mean(x, axis=-1, keepdims=True)  # omniglot scans are stored as RGB
    if spec.invert:
      x = level - x  # ink = 1 as in the NVAE omniglot arrays
    if spec.center_crop:
      x = _resize_shorter_and_center_crop(x, size)
    elif size != spec.native_size:
      x = tf.image.resize(x, [size, size], method="bilinear", antialias=True)
    if spec.center_crop or size != spec.native_size:
      # Back onto integer levels, so dequantization noise fills exactly one bin.
      x = tf.round(tf.clip_by_value(x, 0.0, level))
    x = tf.ensure_shape(x, [size, size, spec.channels])
    if flip:  # score_sde / CLD-SGM: random horizontal flips on CIFAR-10 and CelebA
      x = tf.where(uniform(0, index, []) < 0.5, tf.reverse(x, axis=[1]), x)
    if cfg.binarize:  # NVAE / LSGM: dynamic binarization, resampled every epoch
      x = tf.cast(uniform(1, index, tf.shape(x)) < x / level, tf.float32)
    elif cfg.dequantize:  # score_sde: uniform dequantization for likelihood training
      x = (x + uniform(1, index, tf.shape(x))) / (level + 1.0)
    else:
      x = x / level
    if cfg.pad_to and cfg.pad_to != size:  # NVAE: MNIST 28 -> 32 with zeros
      before = (cfg.pad_to - size) // 2
      after = cfg.pad_to - size - before
      x = tf.pad(x, [[before, after], [before, after], [0, 0]])
    if cfg.centered:  # score_sde: data in [-1, 1]
      x = 2.0 * x - 1.0
    if spec.label_key and spec.num_classes:
      label = tf.cast(example[spec.label_key], tf.int32)
    else:
      label = tf.zeros([], tf.int32)
    out = {"x": x, "label": label}
    if with_mask:
      out["mask"] = tf.ones([], tf.float32)
    return out

  return fn


def train_iterator(cfg: DataConfig, *, global_batch_size: int, seed: int,
                   start_position: int, local_batch_size: int, process_index: int,
                   process_count: int) -> Iterator[Batch]:
  """This process's shard of the TFDS training stream from global batch ``start_position``.

  Args:
    cfg: validated data config of a TFDS dataset.
    global_batch_size: examples per global batch (used only for the error message).
    seed: training seed.
    start_position: global batches already consumed.
    local_batch_size: examples per batch on this process.
    process_index: this process.
    process_count: number of processes; each reads an equal, disjoint file range.

  Returns:
    An infinite iterator of ``{"x": float32 [L, H, W, C], "label": int32 [L]}``.

  Raises:
    FileNotFoundError: the dataset is not prepared (names the ``tfds build`` step).
  """
  spec = catalog.TFDS_DATASETS[cfg.name]
  builder = _open_builder(spec, cfg)
  split = tfds.split_for_jax_process(spec.train_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  num_local = _num_examples(builder, _read(builder, spec, cfg, split, None), split)
  steps_per_epoch = num_local // local_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{spec.builder} {spec.train_split}: {num_local} examples per process "
                     f"cannot fill one batch of {local_batch_size} (global {global_batch_size})")
  image_feature = builder.info.features["image"]

  def epoch_dataset(epoch: int, skip_batches: int) -> tf.data.Dataset:
    words = (seed, epoch, process_index)
    ds = _read(builder, spec, cfg, split, derive_seed(Stream.TFDS_FILES, *words) % 2**31)
    ds = ds.shuffle(cfg.shuffle_buffer, seed=derive_seed(Stream.TFDS_SHUFFLE, *words),
                    reshuffle_each_iteration=False)
    ds = ds.take(steps_per_epoch * local_batch_size).enumerate()
    ds = ds.skip(skip_batches * local_batch_size)  # resume: skip before decoding
    fn = _example_fn(spec, cfg, image_feature, flip=cfg.random_flip, with_mask=False,
                     noise_seeds=(derive_seed(Stream.TFDS_AUG, *words, 0),
                                  derive_seed(Stream.TFDS_AUG, *words, 1)))
    ds = ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(local_batch_size, drop_remainder=True).prefetch(AUTOTUNE)

  epoch, offset = divmod(start_position, steps_per_epoch)
  first = epoch_dataset(epoch, offset)
  logging.info("%s: %d examples on process %d/%d, %d steps per epoch, starting at epoch %d "
               "step %d", spec.builder, num_local, process_index, process_count,
               steps_per_epoch, epoch, offset)

  def generate() -> Iterator[Batch]:
    ds, e = first, epoch
    while True:
      yield from ds.as_numpy_iterator()
      e += 1
      ds = epoch_dataset(e, 0)

  return generate()


def eval_iterator(cfg: DataConfig, *, global_batch_size: int, local_batch_size: int,
                  process_index: int, process_count: int,
                  split_name: str = "eval") -> Iterator[Batch]:
  """One pass over this process's shard of the held-out split, padded with mask 0.

  Args:
    cfg: validated data config of a TFDS dataset.
    global_batch_size: examples per global batch.
    local_batch_size: examples per batch on this process.
    process_index: this process.
    process_count: number of processes; shards differ by at most one example.

  Returns:
    An iterator of ``{"x", "label", "mask"}``; every process yields the same number of
    batches, ceil(ceil(N / process_count) / L).
  """
  del global_batch_size  # the layout is fully described by local_batch_size
  spec = catalog.TFDS_DATASETS[cfg.name]
  if split_name == "train":  # one pass over the training split (encoding it once)
    spec = dataclasses.replace(spec, eval_split=spec.train_split)
  builder = _open_builder(spec, cfg)
  split = tfds.split_for_jax_process(spec.eval_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=False)
  ds = _read(builder, spec, cfg, split, None)
  num_local = _num_examples(builder, ds, split)
  try:
    num_total = int(builder.info.splits[spec.eval_split].num_examples)
  except (KeyError, ValueError):  # no split metadata (e.g. tfds.testing.mock_data)
    num_total = num_local * process_count
  per_process = max(num_local, math.ceil(num_total / process_count))
  num_batches = math.ceil(per_process / local_batch_size)
  size = cfg.pad_to or cfg.resolved_image_size
  fn = _example_fn(spec, cfg, builder.info.features["image"], flip=False, with_mask=True,
                   noise_seeds=(derive_seed(Stream.TFDS_EVAL_AUG, process_index, 0),
                                derive_seed(Stream.TFDS_EVAL_AUG, process_index, 1)))
  ds = ds.enumerate().map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)
  padding = tf.data.Dataset.from_tensors({
      "x": tf.zeros([size, size, spec.channels], tf.float32),
      "label": tf.zeros([], tf.int32), "mask": tf.zeros([], tf.float32)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch_size)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(AUTOTUNE)
  return ds.as_numpy_iterator()
