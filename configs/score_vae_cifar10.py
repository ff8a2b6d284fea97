"""ScoreVAE on CIFAR-10 (score_vae_paper.txt Table 1; paper code
conditional_score_diffusion@b188acd3 configs/scoreVAE/paper/pretrained/cifar10/
cifar10_prior.py, VAE/SimpleEncoder.py and configs/VAE/cifar_simple.py).

  python -m lsgm_jax.main --config=configs/score_vae_cifar10.py:prior --workdir=gs://B/svae_prior
  python -m lsgm_jax.main --config=configs/score_vae_cifar10.py:encoder --workdir=gs://B/svae \
      --config.score_vae.prior_checkpoint=gs://B/svae_prior
  python -m lsgm_jax.main --config=configs/score_vae_cifar10.py:beta_vae --workdir=gs://B/svae_vae

Variants:
* ``prior``: DDPM U-Net nf 128, ch_mult 1,2,2,2, 4 residual blocks, attention at 16,
  dropout 0.1 (57,633,027 parameters); batch 256, Adam lr 2e-4, 5000 warm-up steps,
  clipping 1, EMA 0.9999. The paper does not give the prior's step count; 1.3M is
  score_sde's DDPM CIFAR-10 schedule.
* ``encoder``: the time-dependent simple encoder, c_hid 64, latent 384 (1,982,144
  parameters); L_beta with beta 0.01; batch 32, lr 2e-4, 2500 warm-up steps, EMA 0.9999,
  1.4M steps (appendix B.1).
* ``beta_vae``: the same encoder without t (1,981,376) and the mirror decoder
  (1,196,099); loss ||x - x_hat|| + 0.01 KL; batch 128, Adam lr 1e-4 (the reference's
  ReduceLROnPlateau is not reproduced: constant lr).
"""

from lsgm_jax.config_defaults import get_score_vae_config

VARIANTS = ("prior", "encoder", "beta_vae")


def get_config(variant: str = "encoder"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/score_vae_cifar10.py: {VARIANTS}")
  config = get_score_vae_config(variant)
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  model = config.model
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  sv = config.score_vae
  sv.latent_dim = 384
  sv.encoder.name = "simple"
  sv.encoder.nf = 64
  sv.decoder = "mirror"
  config.training.log_every = 500
  config.checkpoint.every_steps = 10_000
  config.checkpoint.permanent_every_steps = 100_000
  config.eval.batch_size = 256
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  config.optim.lr = 2e-4
  if variant == "prior":
    config.training.batch_size = 256
    config.training.num_train_steps = 1_300_000
    config.optim.warmup_steps = 5000
  elif variant == "encoder":
    config.training.batch_size = 32
    config.training.num_train_steps = 1_400_000
    config.optim.warmup_steps = 2500
  else:
    config.training.batch_size = 128
    config.training.num_train_steps = 1_000_000
    config.training.ema_decay = 0.0  # the reference VAE keeps no EMA
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0
  return config
