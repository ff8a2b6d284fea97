"""The latent VAE's first stage on scikit-learn's 8x8 digits (CPU-sized): an LDM-style
KL autoencoder with f = 2, 8x8x1 images -> 4x4x2 latents (half the pixel dimensions),
trained with L1 + patch-adversarial losses (latent VAE paper, §3.1). No perceptual term:
no VGG weights are shipped, and an 8x8 digit is too small for VGG's pooling anyway.

Then ``--mode=encode`` writes ``<workdir>/latents/{train,eval}.npz`` for the second
stage (``data.name="latents"``, ``data.latents_dir=<workdir>/latents``).

Variants: ``:smoke``.
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = get_default_config()
  config.method = "autoencoder"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True  # LDM's autoencoders see images in [-1, 1]

  ae = config.autoencoder
  ae.preset = ""
  ae.ch = 32
  ae.ch_mult = (1, 2)  # f = 2: 8x8 -> 4x4
  ae.num_res_blocks = 1
  ae.attn_resolutions = ()
  ae.z_channels = 2
  ae.embed_dim = 2
  ae.num_groups = 8
  ae.l1_weight = 1.0
  ae.perceptual_weight = 0.0
  ae.kl_weight = 1e-6  # LDM
  ae.adversarial_weight = 0.5  # LDM disc_weight
  ae.disc_ndf = 32
  ae.disc_layers = 1  # 8x8 -> 2x2 patch logits
  ae.disc_start = 2000  # LDM starts the discriminator late, once reconstructions are good

  config.training.batch_size = 64
  config.training.num_train_steps = 3000
  config.training.log_every = 250
  config.training.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.beta1 = 0.5  # LDM's Adam betas (0.5, 0.9)
  config.optim.beta2 = 0.9
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.min_lr_ratio = 0.05
  config.checkpoint.every_steps = 1000
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  config.eval.batch_size = 297  # the whole held-out split in one batch
  if variant == "smoke":
    config.training.batch_size = 8
    config.training.num_train_steps = 2
    config.training.log_every = 1
    ae.disc_start = 1
    config.sampling.num_samples = 8
    config.sampling.batch_size = 8
    config.eval.batch_size = 8
    config.eval.num_batches = 1
  elif variant:
    raise ValueError(f"configs/autoencoder_digits.py: unknown variant {variant!r} (smoke)")
  return config
