"""The data interface the trainer calls: dataset_info and the two iterator factories.

Both factories do their setup (validation, opening the TFDS builder, the first epoch's
pipeline) before returning, so a bad config or a missing dataset fails at start rather
than at the first ``next``.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from lsgm_jax.data import embedded
from lsgm_jax.data.config import DatasetInfo, as_data_config, build_info, check_batch

Batch = dict[str, np.ndarray]


def dataset_info(data_config: Any) -> DatasetInfo:
  """Shapes and sizes of the configured dataset, without reading or downloading it.

  Args:
    data_config: ``config.data`` (ConfigDict, mapping or ``DataConfig``).

  Returns:
    The ``DatasetInfo``.
  """
  cfg = as_data_config(data_config)
  if cfg.name == "latents":
    from lsgm_jax.data import latents  # pylint: disable=g-import-not-at-top
    return latents.dataset_info(cfg)
  return build_info(cfg)


def make_train_iterator(data_config: Any, *, global_batch_size: int, seed: int,
                        start_position: int = 0, process_index: int = 0,
                        process_count: int = 1) -> Iterator[Batch]:
  """An infinite, deterministic stream of this process's slice of each global batch.

  Args:
    data_config: ``config.data``.
    global_batch_size: examples per step over all processes.
    seed: training seed; the stream is a pure function of it.
    start_position: global batches already consumed. Starting at k yields exactly what a
      fresh iterator yields after k steps (bitwise), which is how a preempted run resumes.
    process_index: this process.
    process_count: number of processes. Embedded data: the processes' slices concatenate
      to the one-process global batch. TFDS: each process reads a disjoint file range.

  Returns:
    Iterator of ``{"x": float32 [global_batch_size // process_count, *shape],
    "label": int32 [local]}`` (labels are zeros for unconditional data).

  Raises:
    ValueError: inconsistent config or batch layout (the message names the field).
    FileNotFoundError: a TFDS dataset is not prepared (names the ``tfds build`` step).
  """
  cfg = as_data_config(data_config)
  local = check_batch(global_batch_size, process_index, process_count)
  if start_position < 0:
    raise ValueError(f"start_position must be >= 0, got {start_position}")
  if cfg.is_tfds:
    from lsgm_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top (imports TF)
    return tfds_pipeline.train_iterator(
        cfg, global_batch_size=global_batch_size, seed=seed, start_position=start_position,
        local_batch_size=local, process_index=process_index, process_count=process_count)
  if cfg.name == "latents":
    from lsgm_jax.data import latents  # pylint: disable=g-import-not-at-top
    return latents.train_iterator(
        cfg, global_batch_size=global_batch_size, seed=seed, start_position=start_position,
        local_batch_size=local, process_index=process_index)
  return embedded.train_iterator(
      cfg, global_batch_size=global_batch_size, seed=seed, start_position=start_position,
      local_batch_size=local, process_index=process_index)


def check_train_data(data_config: Any) -> None:
  """Fails now, as ``make_train_iterator`` would, if a TFDS dataset is not prepared (the
  trainer calls it before it starts compiling, so that error is not kept waiting)."""
  cfg = as_data_config(data_config)
  if cfg.is_tfds:
    from lsgm_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top (imports TF)
    tfds_pipeline.check_prepared(cfg)


def make_eval_iterator(data_config: Any, *, global_batch_size: int, process_index: int = 0,
                       process_count: int = 1, split: str = "eval") -> Iterator[Batch]:
  """One finite pass over the held-out split, every example exactly once.

  Args:
    data_config: ``config.data``.
    global_batch_size: examples per step over all processes.
    process_index: this process.
    process_count: number of processes; all yield the same number of batches.

  Returns:
    Iterator of ``{"x", "label", "mask"}`` local batches of ``global_batch_size //
    process_count`` rows; the last batches are zero-padded and ``mask`` (float32) is 1
    for real rows, 0 for padding. Random preprocessing (dequantization, binarization)
    uses a fixed seed; no flips.

  ``split="train"`` makes the same single padded pass over the training split (used to
  encode a dataset once, ``lsgm_jax.encode_latents``); the 2-D toys have none.
  """
  cfg = as_data_config(data_config)
  local = check_batch(global_batch_size, process_index, process_count)
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  if cfg.is_tfds:
    from lsgm_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top (imports TF)
    return tfds_pipeline.eval_iterator(
        cfg, global_batch_size=global_batch_size, local_batch_size=local,
        process_index=process_index, process_count=process_count, split_name=split)
  if cfg.name == "latents":
    from lsgm_jax.data import latents  # pylint: disable=g-import-not-at-top
    return latents.eval_iterator(cfg, global_batch_size=global_batch_size,
                                 local_batch_size=local, process_index=process_index,
                                 split=split)
  return embedded.eval_iterator(cfg, global_batch_size=global_batch_size,
                                local_batch_size=local, process_index=process_index,
                                split=split)
