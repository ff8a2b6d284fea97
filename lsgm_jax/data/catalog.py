"""What every dataset is: builder, splits, sizes, native shape. No TensorFlow import.

``dataset_info`` and config validation read this table, so a trainer that only asks
for shapes never pays for importing TensorFlow.
"""

from __future__ import annotations

import dataclasses

TOY_DATASETS = ("swiss_roll", "diamond")
EMBEDDED_DATASETS = TOY_DATASETS + ("digits",)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How one config ``data.name`` maps onto a TFDS builder.

  Attributes:
    builder: TFDS name, with config (``"lsun/church_outdoor"``).
    train_split: split (or sub-split) read for training.
    eval_split: held-out split read by the eval iterator.
    num_train: examples in ``train_split`` (whole dataset, before per-process sharding).
    num_eval: examples in ``eval_split``.
    channels: channels after preprocessing (omniglot is stored RGB, used grey).
    native_size: stored height = width, or 0 for variable-size images.
    default_size: image size when ``data.image_size`` is 0.
    max_level: largest stored pixel value (255 for 8-bit, 1 for binarized MNIST).
    label_key: feature holding the class, or ``None`` when unconditional.
    num_classes: classes of ``label_key`` (0 when unconditional).
    center_crop: resize the shorter side then center-crop (variable-size photos).
    invert: store strokes as 1 (omniglot is black ink on white paper).
  """

  builder: str
  train_split: str
  eval_split: str
  num_train: int
  num_eval: int
  channels: int
  native_size: int
  default_size: int
  max_level: int = 255
  label_key: str | None = None
  num_classes: int = 0
  center_crop: bool = False
  invert: bool = False


TFDS_DATASETS: dict[str, TfdsSpec] = {
    "cifar10": TfdsSpec(
        "cifar10", "train", "test", 50_000, 10_000, channels=3, native_size=32,
        default_size=32, label_key="label", num_classes=10),
    # TFDS ships only a train split of CelebA-HQ; NVAE/LSGM hold out the last 3k images
    # (27k train / 3k validation), which we reproduce with a fixed slice.
    "celeb_a_hq": TfdsSpec(
        "celeb_a_hq/256", "train[:27000]", "train[27000:]", 27_000, 3_000, channels=3,
        native_size=256, default_size=256),
    "mnist": TfdsSpec(
        "mnist", "train", "test", 60_000, 10_000, channels=1, native_size=28,
        default_size=28, label_key="label", num_classes=10),
    # Statically binarized MNIST (Larochelle & Murray); pixels are already 0/1. For the
    # dynamically binarized MNIST of NVAE/LSGM use name="mnist" with binarize=True.
    "binarized_mnist": TfdsSpec(
        "binarized_mnist", "train", "test", 50_000, 10_000, channels=1, native_size=28,
        default_size=28, max_level=1),
    # NVAE/LSGM use 28x28 omniglot with dynamic binarization; TFDS stores 105x105 RGB
    # scans, which we turn grey, invert (ink = 1) and downsample to 28.
    "omniglot": TfdsSpec(
        "omniglot", "train", "test", 19_280, 13_180, channels=1, native_size=105,
        default_size=28, invert=True),
    "lsun_church": TfdsSpec(
        "lsun/church_outdoor", "train", "validation", 126_227, 300, channels=3,
        native_size=0, default_size=256, center_crop=True),
    "lsun_bedroom": TfdsSpec(
        "lsun/bedroom", "train", "validation", 3_033_042, 300, channels=3,
        native_size=0, default_size=256, center_crop=True),
    "imagenet256": TfdsSpec(
        "imagenet2012", "train", "validation", 1_281_167, 50_000, channels=3,
        native_size=0, default_size=256, label_key="label", num_classes=1000,
        center_crop=True),
}

# The 8x8 digits of scikit-learn: 1797 images with 17 grey levels (0..16). The split is
# fixed (a permutation under a constant seed), independent of the training seed.
DIGITS_NUM_TRAIN = 1500
DIGITS_NUM_EVAL = 297
DIGITS_MAX_LEVEL = 16
DIGITS_SIZE = 8

# Latents of a trained first stage, written by --mode=encode (lsgm_jax.data.latents).
LATENT_DATASETS = ("latents",)

ALL_DATASETS = EMBEDDED_DATASETS + LATENT_DATASETS + tuple(TFDS_DATASETS)
