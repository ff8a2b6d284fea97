"""Class-conditional latent VAE on ImageNet-256 (latent VAE paper, Table 5 "ImageNet-256";
authors' config/imagenet256_kl8.py): a 386.4M-parameter deep VAE on the 32x32x4 latents
of LDM's f = 8 KL autoencoder, guided sampling with w_mu = 1.5, w_sigma = 3 (section 4).

The model is declared for the latents (``latent_vae.latent_shape``); train on them after
``--mode=encode`` of the first stage:

  python -m lsgm_jax.main --config=configs/latent_vae_imagenet256.py --workdir=runs/lv_in \
      --config.data.name=latents --config.data.latents_dir=runs/ae_in_f8/latents \
      --config.latent_vae.first_stage=runs/ae_in_f8

Variants: none.
"""

from lsgm_jax.config_defaults import get_latent_vae_config

VARIANTS = ("",)


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"configs/latent_vae_imagenet256.py has no variants, got {variant!r}")
  config = get_latent_vae_config()
  config.data.name = "imagenet256"  # the images the latents encode (1000 classes)
  lv = config.latent_vae
  lv.preset = "imagenet256"
  lv.latent_shape = (32, 32, 4)  # f = 8
  lv.class_conditional = True
  lv.sigma_q = 0.07  # Table 5
  lv.spectral_weight = 0.1  # Table 5 "SR penalty"
  lv.w_mu = 1.5  # section 4 (FID 9.34 with guidance)
  lv.w_sigma = 3.0
  lv.guide_mean_at_1x1 = True
  tr = config.training
  tr.batch_size = 1024  # Table 5: microbatch 128 x 8 accumulations
  tr.num_microbatches = 8
  tr.ema_decay = 0.9998  # Table 5
  tr.skip_threshold = 300.0 * 32 * 32 * 4  # reference: 300 per data dimension
  tr.num_train_steps = 1_200_000  # reference decay_steps
  config.optim.lr = 3e-4  # Table 5
  config.sampling.num_samples = 1000
  config.sampling.batch_size = 100
  return config
