"""ScoreVAE on scikit-learn's embedded 8x8 digits (CPU-sized; each stage trains within
10 minutes on 2 cores). The paper's recipe scaled down: a small DDPM U-Net prior on
[0, 1] digits, then the time-dependent simple encoder (latent 8) against the frozen
prior, and the beta-VAE baseline with the same encoder (without t) and a mirror decoder.

  python -m lsgm_jax.main --config=configs/score_vae_digits.py:prior --workdir=runs/score_vae_digits_prior
  python -m lsgm_jax.main --config=configs/score_vae_digits.py:encoder --workdir=runs/score_vae_digits
  python -m lsgm_jax.main --config=configs/score_vae_digits.py:encoder --workdir=runs/score_vae_digits --mode=sample
  python -m lsgm_jax.main --config=configs/score_vae_digits.py:beta_vae --workdir=runs/score_vae_digits_vae

Variants: ``prior``, ``encoder`` (reads runs/score_vae_digits_prior unless
``--config.score_vae.prior_checkpoint`` says otherwise), ``beta_vae``, and ``*_smoke``
(a few steps of tiny models, for tests).
"""

from lsgm_jax.config_defaults import get_score_vae_config

VARIANTS = ("prior", "encoder", "beta_vae", "prior_smoke", "encoder_smoke", "beta_vae_smoke")


def get_config(variant: str = "encoder"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/score_vae_digits.py: {VARIANTS}")
  stage = variant.removesuffix("_smoke")
  config = get_score_vae_config(stage)
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  # The prior (read by every stage that uses it): sgm_digits.py's U-Net.
  model = config.model
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.dropout = 0.0
  sv = config.score_vae
  sv.latent_dim = 8
  sv.encoder.name = "simple"
  sv.encoder.nf = 32
  sv.decoder = "mirror"
  sv.num_images = 32
  sv.interpolate_pairs = 4
  sv.interpolate_steps = 7
  config.training.log_every = 200
  config.training.ema_decay = 0.999
  config.checkpoint.every_steps = 1000
  config.eval.batch_size = 297  # the whole held-out split
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  if stage == "prior":
    config.training.batch_size = 128
    config.training.num_train_steps = 2500
    config.optim.schedule = "cosine"
    config.optim.min_lr_ratio = 0.05
  elif stage == "encoder":
    sv.prior_checkpoint = "runs/score_vae_digits_prior"
    config.training.batch_size = 64
    config.training.num_train_steps = 2000
  else:
    config.training.batch_size = 64
    config.training.num_train_steps = 4000
  if variant.endswith("smoke"):
    config.training.batch_size = 8
    config.training.num_train_steps = 2
    config.training.log_every = 1
    config.optim.warmup_steps = 0
    config.sampling.num_steps = 4
    config.sampling.num_samples = 8
    config.sampling.batch_size = 8
    config.eval.batch_size = 8
    config.eval.num_batches = 1
    model.nf = 8
    model.ch_mult = (1,)
    sv.encoder.nf = 8
    sv.latent_dim = 4
    sv.num_images = 4
    sv.interpolate_pairs = 2
    sv.interpolate_steps = 3
    if stage == "encoder":
      sv.prior_checkpoint = ""  # set by the test
  return config
