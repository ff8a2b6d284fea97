"""The latent VAE paper's deep-VAE configurations (Table 5), by name.

``CONFIGS[name]()`` is what ``config.latent_vae.preset=name`` builds
(``lsgm_jax.methods.latent_vae``); trainable-parameter counts are pinned in
tests/test_hvae.py. Where the reference repository (ericl122333/latent-vae-jax
``config/*.py``) has the file, its values win over the table's and the docstring says so.
"""

from __future__ import annotations

import dataclasses

from lsgm_jax.models.hvae import HVAEConfig, level_resolutions, remat_from


def church_config() -> HVAEConfig:
  """Church Latent-VAE (reference config/church.py): 119,137,672 parameters."""
  return HVAEConfig(
      resolution=32, channels=192, enc_channels=192, channel_mult=(1, 1, 1, 1, 1),
      ffn_ratio=(4, 4, 4, 4, 4), num_groups=(8, 8, 8, 8, 8), enc_layers=(4, 4, 4, 4, 4),
      num_attention=(4, 4, 4, 0, 0), attention_heads=(4, 8, 8, 0, 0), data_channels=4,
      z_channels=16, remat=remat_from((32, 16, 8, 4, 1)), sigma_q=0.07,
      spectral_weight=0.1)


def church_rgb32_config() -> HVAEConfig:
  """Church 32^2 RGB (Table 5, no reference file): the latent model on 3 channels."""
  return dataclasses.replace(church_config(), data_channels=3, sigma_q=0.035)


def church_upsampler_config() -> HVAEConfig:
  """Church upsampler 32 -> 256 (Table 5, no reference file; heads not given: 4)."""
  res = level_resolutions(256, 4)
  return HVAEConfig(
      resolution=256, channels=64, enc_channels=64, channel_mult=(2, 2, 3, 3),
      ffn_ratio=(0, 0, 4, 4), num_groups=(3, 6, 8, 8), enc_layers=(2, 3, 4, 4),
      num_attention=(0, 0, 0, 4), attention_heads=(0, 0, 0, 4), data_channels=3,
      lowres_conditioning=True, remat=remat_from(res), sigma_q=0.05,
      spectral_weight=0.25)


def church_pixel_config() -> HVAEConfig:
  """Church pixel-space VAE at 256^2 (Table 5, no reference file; heads not given)."""
  res = level_resolutions(256, 8)
  return HVAEConfig(
      resolution=256, channels=64, enc_channels=64,
      channel_mult=(2, 2, 3, 3, 3, 3, 3, 3), ffn_ratio=(0, 0, 0, 4, 4, 4, 4, 4),
      num_groups=(2, 5, 8, 8, 8, 8, 8, 8), enc_layers=(2, 3, 4, 4, 4, 4, 4, 4),
      num_attention=(0, 0, 0, 4, 4, 4, 0, 0), attention_heads=(0, 0, 0, 4, 8, 8, 0, 0),
      data_channels=3, remat=remat_from(res), sigma_q=0.05, spectral_weight=0.25)


def bedroom_f4_config() -> HVAEConfig:
  """Bedroom f-4 (reference config/bedroom.py): 96,241,478 parameters.

  Table 5 lists channel multipliers 1,...; the reference file (whose count the table
  reports) uses 2,2,2,3,3,3 with base 64.
  """
  res = level_resolutions(64, 6)
  return HVAEConfig(
      resolution=64, channels=64, enc_channels=64, channel_mult=(2, 2, 2, 3, 3, 3),
      ffn_ratio=(0, 4, 4, 4, 4, 4), num_groups=(8, 12, 10, 8, 6, 6),
      enc_layers=(4, 6, 5, 4, 3, 3), num_attention=(0, 4, 4, 4, 0, 0),
      attention_heads=(0, 4, 8, 8, 0, 0), data_channels=3, z_channels=16,
      remat=remat_from(res), sigma_q=0.1, spectral_weight=0.1)


def bedroom_f8_config() -> HVAEConfig:
  """Bedroom f-8, 32^2 x 4 latents (Table 5, no reference file; heads as Church)."""
  return HVAEConfig(
      resolution=32, channels=192, enc_channels=192, channel_mult=(1, 1, 1, 1, 1),
      ffn_ratio=(4, 4, 4, 4, 4), num_groups=(8, 8, 7, 6, 6), enc_layers=(4, 4, 4, 3, 3),
      num_attention=(4, 4, 4, 0, 0), attention_heads=(4, 8, 8, 0, 0), data_channels=4,
      remat=remat_from((32, 16, 8, 4, 1)), sigma_q=0.07, spectral_weight=0.1)


def bedroom_f16_config() -> HVAEConfig:
  """Bedroom f-16, 16^2 x 16 latents (Table 5, no reference file; LDM's f-16 KL
  autoencoder has 16 latent channels; heads as Church)."""
  return HVAEConfig(
      resolution=16, channels=192, enc_channels=192, channel_mult=(1, 1, 1, 1),
      ffn_ratio=(4, 4, 4, 4), num_groups=(10, 9, 8, 6), enc_layers=(5, 5, 4, 3),
      num_attention=(4, 4, 0, 0), attention_heads=(4, 8, 0, 0), data_channels=16,
      remat=remat_from((16, 8, 4, 1)), sigma_q=0.07, spectral_weight=0.1)


def imagenet256_config() -> HVAEConfig:
  """Class-conditional ImageNet-256 on f-8 latents (reference
  config/imagenet256_kl8.py): 386,366,344 parameters."""
  return HVAEConfig(
      resolution=32, channels=256, enc_channels=384, channel_mult=(1, 1, 1, 1, 1),
      ffn_ratio=(4, 6, 8, 10, 12), num_groups=(10, 12, 10, 8, 8),
      enc_layers=(4, 5, 4, 3, 3), num_attention=(4, 4, 4, 0, 0),
      attention_heads=(4, 8, 8, 8, 8), data_channels=4, z_channels=16,
      num_classes=1000, hierarchical_prior=True, remat=remat_from((32, 16, 8, 4, 1)),
      sigma_q=0.07, spectral_weight=0.1)


CONFIGS = {
    "church": church_config,
    "church_rgb32": church_rgb32_config,
    "church_upsampler": church_upsampler_config,
    "church_pixel": church_pixel_config,
    "bedroom_f4": bedroom_f4_config,
    "bedroom_f8": bedroom_f8_config,
    "bedroom_f16": bedroom_f16_config,
    "imagenet256": imagenet256_config,
}
