"""Unconditional deep VAEs on LSUN Church-256 (latent VAE paper, section 4.1 and Table 5).

Variants:
  "" / ``latent``: the latent VAE on 32x32x4 f = 8 latents (authors' config/church.py,
    119.1M); train with ``--config.data.name=latents --config.data.latents_dir=...``.
  ``rgb32``: the same deep VAE on 32x32 RGB images (the first stage of the upsampling
    stack).
  ``upsampler``: 32 -> 256 VAE upsampler (62.8M), conditioned on the image downsampled
    to 32x32.
  ``pixel``: pixel-space deep VAE at 256x256 (143.3M).
"""

from lsgm_jax.config_defaults import get_latent_vae_config

VARIANTS = ("", "rgb32", "upsampler", "pixel")  # "latent" = ""


def get_config(variant: str = ""):
  if variant not in VARIANTS + ("latent",):
    raise ValueError(f"configs/latent_vae_church.py: unknown variant {variant!r} "
                     f"(one of {VARIANTS} or 'latent')")
  config = get_latent_vae_config()
  config.data.name = "lsun_church"
  lv = config.latent_vae
  lv.class_conditional = False  # section 5: standard normal prior
  tr = config.training
  tr.batch_size = 128
  tr.num_train_steps = 250_000  # section 4.1
  if variant in ("", "latent"):
    lv.preset, lv.latent_shape = "church", (32, 32, 4)
    lv.sigma_q, lv.spectral_weight, tr.ema_decay, config.optim.lr = 0.07, 0.1, 0.9999, 2e-4
  elif variant == "rgb32":
    config.data.image_size = 32
    lv.preset = "church_rgb32"
    lv.sigma_q, lv.spectral_weight, tr.ema_decay, config.optim.lr = 0.035, 0.1, 0.9999, 2e-4
  elif variant == "upsampler":
    lv.preset = "church_upsampler"
    lv.sigma_q, lv.spectral_weight, tr.ema_decay, config.optim.lr = 0.05, 0.25, 0.9998, 1e-4
    tr.num_microbatches = 4  # Table 5: 32 x 4
  else:
    lv.preset = "church_pixel"
    lv.sigma_q, lv.spectral_weight, tr.ema_decay, config.optim.lr = 0.05, 0.25, 0.9999, 1e-4
    tr.num_microbatches = 4  # Table 5: 32 x 4
  side, _, channels = lv.latent_shape or (config.data.image_size or 256, 0, 3)
  tr.skip_threshold = 300.0 * side * side * channels  # reference: 300 per dimension
  return config
