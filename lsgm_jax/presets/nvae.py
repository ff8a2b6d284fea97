"""LSGM's NVAE configurations (NVlabs/LSGM README ``train_vae.py`` commands).

Trainable-parameter counts are pinned in tests/test_nvae.py. The configs in ``configs/``
set the same values field by field on ``config.lsgm.vae``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lsgm_jax.models.nvae import NVAEConfig


def nvae_cifar10_config(variant: str = "vae1", **overrides: Any) -> NVAEConfig:
  """LSGM CIFAR-10 NVAE (NVlabs/LSGM README ``train_vae.py`` commands).

  vae1 ("balanced") and vae2 ("best FID") differ only in KL annealing (training
  settings, not architecture): 128 channels, 2 pre/post cells, 2 cells per group, one
  latent scale of 20 groups x 9 channels at 16x16, ``channel_mult 1 2``, res_bnswish,
  no flows. vae3 ("best NLL"): 256 channels, 3 pre/post cells, 3 cells per group,
  4 groups x 45 channels, ``num_nf 2``.

  Args:
    variant: "vae1", "vae2" or "vae3".
    **overrides: NVAEConfig fields to replace.

  Returns:
    The NVAEConfig.
  """
  if variant in ("vae1", "vae2"):
    fields = dict(num_channels_enc=128, num_channels_dec=128, num_preprocess_cells=2,
                  num_postprocess_cells=2, num_cell_per_cond_enc=2, num_cell_per_cond_dec=2,
                  num_groups_per_scale=20, num_latent_per_group=9, num_nf=0)
  elif variant == "vae3":
    fields = dict(num_channels_enc=256, num_channels_dec=256, num_preprocess_cells=3,
                  num_postprocess_cells=3, num_cell_per_cond_enc=3, num_cell_per_cond_dec=3,
                  num_groups_per_scale=4, num_latent_per_group=45, num_nf=2)
  else:
    raise ValueError(f"unknown CIFAR-10 NVAE variant {variant!r} (vae1, vae2, vae3)")
  base = dict(image_size=32, data_channels=3, num_preprocess_blocks=1, num_postprocess_blocks=1,
              num_latent_scales=1, channel_mult=(1, 2), arch_instance="res_bnswish",
              use_se=True, decoder_dist="dml", num_mixture_dec=10, num_x_bits=8)
  base.update(fields)
  base.update(overrides)
  return NVAEConfig(**base)


def nvae_mnist_config(**overrides: Any) -> NVAEConfig:
  """LSGM MNIST NVAE (README command): 28x28 padded to 32, 64 channels, 2 pre/post blocks
  of 3 cells, one latent scale of 2 groups x 20 channels at 8x8, ``channel_mult 1 2 2``,
  res_mbconv, Bernoulli decoder, output cropped back to 28x28."""
  base = dict(image_size=32, data_channels=1, num_channels_enc=64, num_channels_dec=64,
              num_preprocess_blocks=2, num_postprocess_blocks=2, num_preprocess_cells=3,
              num_postprocess_cells=3, num_latent_scales=1, num_groups_per_scale=2,
              num_latent_per_group=20, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1,
              channel_mult=(1, 2, 2), arch_instance="res_mbconv", use_se=True, num_nf=0,
              decoder_dist="bin", crop_output=True)
  base.update(overrides)
  return NVAEConfig(**base)


def nvae_celebahq256_config(variant: str = "quantitative", **overrides: Any) -> NVAEConfig:
  """LSGM CelebA-HQ-256 NVAE (README ``train_vae.py`` commands): 64 channels, one pre/post
  block of 2 cells, 2 cells per group, 20 channels per group, ``num_nf 2``, res_mbconv,
  5-bit logistic mixture, and the encoder's input pyramid
  (``--progressive_input_vae input_skip``). "quantitative": 3 latent scales x 8 groups,
  ``channel_mult 1 1 2 4``; "qualitative": 2 scales x 10 groups, ``channel_mult 1 1 2``."""
  if variant == "quantitative":
    fields = dict(num_latent_scales=3, num_groups_per_scale=8, channel_mult=(1, 1, 2, 4))
  elif variant == "qualitative":
    fields = dict(num_latent_scales=2, num_groups_per_scale=10, channel_mult=(1, 1, 2))
  else:
    raise ValueError(f"unknown CelebA-HQ-256 NVAE variant {variant!r} (quantitative, "
                     "qualitative)")
  base = dict(image_size=256, data_channels=3, num_channels_enc=64, num_channels_dec=64,
              num_preprocess_blocks=1, num_postprocess_blocks=1, num_preprocess_cells=2,
              num_postprocess_cells=2, num_latent_per_group=20, num_cell_per_cond_enc=2,
              num_cell_per_cond_dec=2, arch_instance="res_mbconv", use_se=True, num_nf=2,
              decoder_dist="dml", num_mixture_dec=10, num_x_bits=5,
              progressive_input_vae="input_skip")
  base.update(fields)
  base.update(overrides)
  return NVAEConfig(**base)


def set_vae_fields(vae: Any, preset: NVAEConfig) -> None:
  """Write ``preset``'s architecture into ``config.lsgm.vae`` (an ml_collections
  ConfigDict), every field the config has except the image geometry, which comes from
  ``config.data`` (``methods.lsgm.nvae_config`` builds the NVAEConfig back from it)."""
  for field in dataclasses.fields(preset):
    if field.name in ("image_size", "data_channels") or field.name not in vae:
      continue
    setattr(vae, field.name, getattr(preset, field.name))
