"""Unconditional latent VAEs on LSUN Bedroom-256 at three compression rates (latent VAE
paper, section 4.2, Table 2 and Table 5).

Variants: "" / ``f4`` (64x64x3 latents, authors' config/bedroom.py, 96.2M), ``f8``
(32x32x4, 107.2M), ``f16`` (16x16x16, 99.8M). Train on the first stage's latents with
``--config.data.name=latents --config.data.latents_dir=<autoencoder workdir>/latents``.
"""

from lsgm_jax.config_defaults import get_latent_vae_config

VARIANTS = ("", "f8", "f16")  # "f4" = ""

_VARIANTS = {  # preset, latent shape, sigma_q (Table 5), microbatches (Table 5)
    "f4": ("bedroom_f4", (64, 64, 3), 0.1, 4),
    "f8": ("bedroom_f8", (32, 32, 4), 0.07, 1),
    "f16": ("bedroom_f16", (16, 16, 16), 0.07, 1),
}


def get_config(variant: str = ""):
  if variant not in VARIANTS + ("f4",):
    raise ValueError(f"configs/latent_vae_bedroom.py: unknown variant {variant!r} "
                     f"(one of {VARIANTS} or 'f4')")
  preset, shape, sigma_q, micro = _VARIANTS[variant or "f4"]
  config = get_latent_vae_config()
  config.data.name = "lsun_bedroom"
  lv = config.latent_vae
  lv.preset, lv.latent_shape, lv.sigma_q = preset, shape, sigma_q
  lv.class_conditional = False
  lv.spectral_weight = 0.1  # Table 5
  if preset == "bedroom_f4":
    lv.kl_schedule_scale = 2000.0  # authors' config/bedroom.py
  tr = config.training
  tr.batch_size = 128  # 32 x 4 (f-4) or 128 x 1
  tr.num_microbatches = micro
  tr.ema_decay = 0.9999
  tr.skip_threshold = 300.0 * shape[0] * shape[1] * shape[2]  # reference: per dimension
  tr.num_train_steps = 1_200_000
  config.optim.lr = 2e-4  # Table 5
  return config
