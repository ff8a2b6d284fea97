"""Class-conditional latent VAE on scikit-learn's embedded 8x8 digits (CPU-sized).

The paper's two stages at toy scale. The first stage is the f = 2 autoencoder of
``configs/autoencoder_digits.py`` (8x8x1 digits -> 4x4x2 latents); ``--mode=encode``
writes its latents, this deep VAE trains on them and decodes its samples through it:

  python -m lsgm_jax.main --config=configs/autoencoder_digits.py --workdir=runs/ae_digits
  python -m lsgm_jax.main --config=configs/autoencoder_digits.py --workdir=runs/ae_digits \
      --mode=encode
  python -m lsgm_jax.main --config=configs/latent_vae_digits.py --workdir=runs/lv_digits \
      --config.data.name=latents --config.data.latents_dir=runs/ae_digits/latents

(``data.name`` stays "digits" in the file so that the config also loads before the
latents exist; ``latent_vae.latent_shape`` declares their shape and is checked against
them.)

Variants: ``:pixel`` (the same recipe on the 8x8 pixels, no first stage: the fallback,
and the model of benchmarks/guidance_accuracy.py), ``:smoke`` (pixels, a few steps).
Training recipe as appendix B: Adam beta1 = beta2 = 0.9, 100 warm-up steps, EMA,
sigma_q reconstruction, shifted-exponential KL schedule, 10% null labels, skip
threshold. Budget: about 10 minutes on 2 CPU cores (pixel variant: 2000 steps, 9 min
unshared at ~3.8 steps/s).
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "pixel", "smoke")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/latent_vae_digits.py: unknown variant {variant!r} "
                     f"(one of {VARIANTS})")
  config = get_default_config()
  config.method = "latent_vae"

  config.data.name = "digits"
  config.data.centered = True
  config.data.dequantize = True

  lv = config.latent_vae
  lv.preset = ""
  lv.channels = 32
  lv.enc_channels = 32
  # Levels 8, 4, 1 (a side below 4 collapses to 1, appendix B).
  lv.channel_mult = (1, 1, 2)
  lv.ffn_ratio = (0, 2, 2)
  lv.num_groups = (2, 3, 3)
  lv.enc_layers = (1, 1, 1)
  lv.num_attention = (0, 1, 0)
  lv.attention_heads = (1, 2, 1)
  lv.z_channels = 4
  lv.class_conditional = True
  lv.sigma_q = 0.1  # digits in [-1, 1]
  lv.spectral_weight = 0.1
  lv.label_dropout = 0.1
  lv.kl_schedule = "shifted_exp"
  lv.kl_schedule_scale = 100.0  # 8 layers instead of the paper's 40-48
  lv.kl_schedule_shift = 10.0
  lv.w_mu = 0.0
  lv.w_sigma = 0.0
  lv.temperature = 1.0
  lv.manifold_label = 3

  tr = config.training
  tr.batch_size = 64
  tr.num_train_steps = 2000
  tr.ema_decay = 0.999
  tr.log_every = 200
  # Reference: skip_threshold 300 per data dimension, never hit in normal training.
  tr.skip_threshold = 300.0 * 64
  op = config.optim
  op.optimizer = "adam"
  op.lr = 1e-3
  op.beta1 = 0.9
  op.beta2 = 0.9  # appendix B
  op.warmup_steps = 100  # appendix B
  op.schedule = "cosine"
  op.min_lr_ratio = 0.1
  op.grad_clip = 0.0  # the reference skips large steps instead of clipping
  config.checkpoint.every_steps = 1000
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.eval.batch_size = 297  # the whole held-out split in one batch

  if variant == "":
    # Deep VAE on the autoencoder's normalised 4x4x2 latents: levels 4, 1.
    lv.latent_shape = (4, 4, 2)
    lv.first_stage = "runs/ae_digits"
    lv.channel_mult = (1, 2)
    lv.ffn_ratio = (2, 2)
    lv.num_groups = (4, 4)
    lv.enc_layers = (2, 2)
    lv.num_attention = (1, 0)
    lv.attention_heads = (2, 1)
    lv.sigma_q = 0.07  # unit-variance latents, as the paper's (Table 5)
    lv.manifold_label = 3
    tr.skip_threshold = 300.0 * 32
    config.data.dequantize = False  # the autoencoder saw plain levels
  if variant == "smoke":
    tr.batch_size = 8
    tr.num_train_steps = 2
    tr.log_every = 1
    config.sampling.num_samples = 8
    config.sampling.batch_size = 8
    config.eval.batch_size = 8
    config.eval.num_batches = 1
  return config
