"""ScoreVAE on CelebA 64x64 (score_vae_paper.txt Table 2; paper code
conditional_score_diffusion@b188acd3 configs/scoreVAE/paper/pretrained/celebA_64/
celebA_64_prior.py, VAE/ResNetEncoder.py and configs/VAE/celebA_no_conv.py). The
reference trained on CelebA-HQ resized to 64; here the TFDS ``celeb_a_hq/256`` images
resized to 64 (27k train / 3k held out).

  python -m lsgm_jax.main --config=configs/score_vae_celeba64.py:prior --workdir=gs://B/svae64_prior
  python -m lsgm_jax.main --config=configs/score_vae_celeba64.py:encoder --workdir=gs://B/svae64 \
      --config.score_vae.prior_checkpoint=gs://B/svae64_prior

Variants:
* ``prior``: DDPM U-Net nf 128, ch_mult 1,1,2,2,3, 2 residual blocks, attention at 16,
  dropout 0 (51,912,195 parameters); batch 256, Adam lr 1e-4, 5000 warm-up, clipping 1,
  EMA 0.9999.
* ``encoder``: the time-dependent DDPM encoder (the U-Net's down path and middle block,
  nf 128, ch_mult 1,1,2,2,3, latent 512: 26,722,944 parameters); batch 32, lr 1e-4,
  5000 warm-up, EMA 0.9999, 300k steps (appendix B.1).
* ``beta_vae``: the same encoder without t and the U-Net's up path as decoder
  (``half_U_decoder_no_conv``); loss ||x - x_hat|| + 0.01 KL; lr 1e-4, 600k steps.
"""

from lsgm_jax.config_defaults import get_score_vae_config

VARIANTS = ("prior", "encoder", "beta_vae")


def get_config(variant: str = "encoder"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/score_vae_celeba64.py: {VARIANTS}")
  config = get_score_vae_config(variant)
  config.data.name = "celeb_a_hq"
  config.data.image_size = 64
  config.data.num_channels = 3
  model = config.model
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 3)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.0
  sv = config.score_vae
  sv.latent_dim = 512
  enc = sv.encoder
  enc.name = "ddpm"
  enc.nf = 128
  enc.ch_mult = (1, 1, 2, 2, 3)
  enc.num_res_blocks = 2
  enc.attn_resolutions = (16,)
  enc.dropout = 0.0
  sv.decoder = "ddpm"
  config.training.log_every = 500
  config.checkpoint.every_steps = 10_000
  config.checkpoint.permanent_every_steps = 100_000
  config.eval.batch_size = 64
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  config.optim.lr = 1e-4
  config.optim.warmup_steps = 5000
  if variant == "prior":
    config.training.batch_size = 256
    config.training.num_train_steps = 1_300_000
  elif variant == "encoder":
    config.training.batch_size = 32
    config.training.num_train_steps = 300_000
  else:
    config.training.batch_size = 32
    config.training.num_train_steps = 600_000
    config.training.ema_decay = 0.0
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0
  return config
