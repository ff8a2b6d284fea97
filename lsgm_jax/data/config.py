"""The ``config.data`` section as a typed, validated dataclass, and ``DatasetInfo``.

The trainer hands over an ``ml_collections.ConfigDict``; it is converted once, at the
boundary, and every inconsistency fails there with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lsgm_jax.data import catalog


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Typed ``config.data``; field names and defaults mirror ``config_defaults.py``.

  Attributes:
    name: one of ``catalog.ALL_DATASETS``.
    image_size: output height = width before padding; 0 = the dataset's default size.
      Ignored for 2-D toy data.
    num_channels: expected channels; 0 = the dataset's own. Ignored for 2-D toy data.
    centered: images in [-1, 1] (score_sde) instead of [0, 1] (NVAE/LSGM).
    dequantize: uniform dequantization of the integer levels (likelihood training).
    random_flip: random left-right flips of training images.
    binarize: dynamic binarization (NVAE/LSGM binary MNIST and omniglot).
    pad_to: zero-pad images to this size after resizing (NVAE: MNIST 28 -> 32); 0 = off.
    data_dir: TFDS data directory; "" = the TFDS default.
    num_toy_eval: held-out examples of the 2-D toy sets.
    shuffle_buffer: tf.data shuffle buffer (examples) for TFDS training.
    latents_dir: for ``name="latents"``: the folder ``--mode=encode`` wrote
      (``<autoencoder workdir>/latents``).
  """

  name: str = "swiss_roll"
  image_size: int = 0
  num_channels: int = 0
  centered: bool = True
  dequantize: bool = False
  random_flip: bool = False
  binarize: bool = False
  pad_to: int = 0
  data_dir: str = ""
  num_toy_eval: int = 10_000
  shuffle_buffer: int = 10_000
  latents_dir: str = ""

  def __post_init__(self):
    _validate(self)

  @property
  def is_toy(self) -> bool:
    return self.name in catalog.TOY_DATASETS

  @property
  def is_tfds(self) -> bool:
    return self.name in catalog.TFDS_DATASETS

  @property
  def resolved_image_size(self) -> int:
    """Image size before padding (``image_size`` or the dataset's default)."""
    if self.is_toy or self.name == "latents":
      return 0
    if self.name == "digits":
      return catalog.DIGITS_SIZE
    return self.image_size or catalog.TFDS_DATASETS[self.name].default_size


def _fail(field: str, message: str) -> None:
  raise ValueError(f"config.data.{field}: {message}")


def _validate(cfg: DataConfig) -> None:
  if cfg.name not in catalog.ALL_DATASETS:
    _fail("name", f"unknown dataset {cfg.name!r}; expected one of {list(catalog.ALL_DATASETS)}")
  if cfg.binarize and cfg.dequantize:
    _fail("binarize", "binarize and dequantize are exclusive (binary data is not dequantized)")
  if cfg.image_size < 0 or cfg.pad_to < 0 or cfg.num_channels < 0:
    _fail("image_size", "image_size, pad_to and num_channels must be >= 0")
  if cfg.is_toy:
    # 2-D points: image fields are ignored, but these two would change what the model
    # learns, so asking for them is an error, not a no-op.
    if cfg.binarize or cfg.dequantize:
      _fail("binarize" if cfg.binarize else "dequantize",
            f"{cfg.name!r} is 2-D continuous data; set binarize=False, dequantize=False")
    if cfg.num_toy_eval <= 0:
      _fail("num_toy_eval", f"must be > 0, got {cfg.num_toy_eval}")
    return
  if cfg.name == "latents":
    if not cfg.latents_dir:
      _fail("latents_dir", "data.name='latents' needs the folder written by "
            "`python -m lsgm_jax.main --mode=encode --config=<autoencoder config> "
            "--workdir=<autoencoder workdir>` (<workdir>/latents)")
    return
  if cfg.name == "digits":
    channels = 1
    if cfg.image_size not in (0, catalog.DIGITS_SIZE):
      _fail("image_size", f"digits are {catalog.DIGITS_SIZE}x{catalog.DIGITS_SIZE}; use 0 or "
            f"{catalog.DIGITS_SIZE} (and pad_to to enlarge), got {cfg.image_size}")
  else:
    channels = catalog.TFDS_DATASETS[cfg.name].channels
    if cfg.shuffle_buffer <= 0:
      _fail("shuffle_buffer", f"must be > 0, got {cfg.shuffle_buffer}")
  if cfg.num_channels not in (0, channels):
    _fail("num_channels", f"{cfg.name!r} has {channels} channel(s), got {cfg.num_channels}")
  if cfg.pad_to and cfg.pad_to < cfg.resolved_image_size:
    _fail("pad_to", f"{cfg.pad_to} is smaller than the image size {cfg.resolved_image_size}")


_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig))


def as_data_config(data_config: Any) -> DataConfig:
  """Converts ``config.data`` (ConfigDict, mapping or DataConfig) into a DataConfig.

  Args:
    data_config: the ``data`` section of the experiment config.

  Returns:
    The validated ``DataConfig``.

  Raises:
    ValueError: an unknown field, or an inconsistent combination, naming the field.
  """
  if isinstance(data_config, DataConfig):
    return data_config
  values = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  unknown = sorted(set(values) - set(_FIELDS))
  if unknown:
    _fail(unknown[0], f"not a field the data pipeline reads (known: {', '.join(_FIELDS)})")
  types = {f.name: f.type for f in dataclasses.fields(DataConfig)}
  cast = {"int": int, "bool": bool, "str": str}
  return DataConfig(**{k: cast[types[k]](v) for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about the data, without reading any of it.

  Attributes:
    name: the ``data.name``.
    shape: per-example shape, ``(2,)`` or ``(H, W, C)`` after resizing and padding.
    num_classes: label classes; 0 when the data is treated as unconditional.
    is_2d: True for the 2-D toy point clouds.
    num_train: training examples (whole dataset), ``None`` for infinite toy streams.
    num_eval: held-out examples (whole dataset).
    data_range: (low, high) of model inputs: (-1, 1) centered, (0, 1) otherwise; for
      the toys the nominal box that holds the point clouds.
    num_levels: intensity levels of the raw data (256 for 8-bit images, 17 for the 8x8
      digits, 0 for continuous toys); with ``data_range`` it fixes the dequantisation bin
      width used by bits/dim.
    shift, scale: per latent channel, for ``latents``: the stored z are
      (first-stage latent - shift) / scale (latent VAE paper, appendix B); () otherwise.
  """

  name: str
  shape: tuple[int, ...]
  num_classes: int
  is_2d: bool
  num_train: int | None
  num_eval: int | None
  data_range: tuple[float, float]
  num_levels: int = 256
  shift: tuple[float, ...] = ()
  scale: tuple[float, ...] = ()

  @property
  def dims(self) -> int:
    """Dimensions per example (product of ``shape``), e.g. for bits/dim."""
    return math.prod(self.shape)


def build_info(cfg: DataConfig) -> DatasetInfo:
  """``DatasetInfo`` for a validated config (see ``lsgm_jax.data.dataset_info``)."""
  if cfg.is_toy:
    return DatasetInfo(cfg.name, (2,), 0, True, None, cfg.num_toy_eval, (-1.0, 1.0), 0)
  if cfg.name == "latents":  # the shape lives with the stored latents
    raise ValueError("build_info: data.name='latents' is described by "
                     "lsgm_jax.data.latents.dataset_info (use lsgm_jax.data.dataset_info)")
  size = cfg.pad_to or cfg.resolved_image_size
  data_range = (-1.0, 1.0) if cfg.centered else (0.0, 1.0)
  if cfg.name == "digits":
    return DatasetInfo(cfg.name, (size, size, 1), 10, False, catalog.DIGITS_NUM_TRAIN,
                       catalog.DIGITS_NUM_EVAL, data_range, catalog.DIGITS_MAX_LEVEL + 1)
  spec = catalog.TFDS_DATASETS[cfg.name]
  return DatasetInfo(cfg.name, (size, size, spec.channels), spec.num_classes, False,
                     spec.num_train, spec.num_eval, data_range)


def check_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
  """Validates the batch layout and returns the per-process batch size.

  Args:
    global_batch_size: examples per step over all processes.
    process_index: this process, in [0, process_count).
    process_count: number of processes.

  Returns:
    ``global_batch_size // process_count``.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of "
                     f"the process count {process_count}")
  return global_batch_size // process_count
