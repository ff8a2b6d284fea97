"""Latent diffusion (Rombach et al. 2022) on scikit-learn's 8x8 digits (CPU-sized): the
``sgm`` method on the 4x4x2 latents of the f = 2 autoencoder of
``configs/autoencoder_digits.py``, samples decoded to 8x8 images through it:

  python -m lsgm_jax.main --config=configs/autoencoder_digits.py --workdir=runs/ae_digits
  python -m lsgm_jax.main --config=configs/autoencoder_digits.py --workdir=runs/ae_digits \
      --mode=encode
  python -m lsgm_jax.main --config=configs/ldm_digits.py --workdir=runs/ldm_digits \
      --config.data.name=latents --config.data.latents_dir=runs/ae_digits/latents
  python -m lsgm_jax.main --config=configs/ldm_digits.py --workdir=runs/ldm_digits \
      --config.data.name=latents --config.data.latents_dir=runs/ae_digits/latents \
      --mode=sample

(``data.name`` stays "digits" in the file so that the config loads before the latents
exist; ``ldm.latent_shape`` declares their shape and is checked against them.)

Variants: "" (VP SDE, the small U-Net of ``configs/sgm_digits.py``), ``:cld`` (CLD with
HSM and the small NCSN++ of ``configs/cld_digits.py``, SSCS sampling), ``:smoke``.
Likelihoods on latents are reported as ``latent_bits_per_dim`` (per latent dimension of
the normalised latents), never as image bits/dim.
"""

from lsgm_jax.config_defaults import get_cld_config, get_default_config

VARIANTS = ("", "cld", "smoke")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/ldm_digits.py: unknown variant {variant!r} (one of {VARIANTS})")
  config = get_cld_config() if variant == "cld" else get_default_config()
  config.method = "sgm"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True  # the autoencoder saw images in [-1, 1]
  config.data.dequantize = False
  config.ldm.latent_shape = (4, 4, 2)
  config.ldm.first_stage = "runs/ae_digits"

  model = config.model
  model.nf = 32
  model.ch_mult = (1, 2)  # 4x4 -> 2x2
  model.num_res_blocks = 1
  model.dropout = 0.0
  if variant == "cld":
    model.name = "ncsnpp"
    model.attn_resolutions = (2,)
    model.fir = True
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "residual"
    model.init_scale = 0.0
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0
    model.mixed_score = True
    config.sampling.num_steps = 200
  else:
    model.name = "unet"
    model.attn_resolutions = ()
    config.sde.name = "vpsde"
    config.sampling.num_steps = 500

  tr = config.training
  tr.batch_size = 128
  tr.num_train_steps = 2500
  tr.log_every = 200
  tr.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.schedule = "cosine"
  config.optim.min_lr_ratio = 0.05
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.eval.batch_size = 297  # the whole held-out split in one batch
  config.checkpoint.every_steps = 1000
  if variant == "smoke":
    tr.batch_size = 16
    tr.num_train_steps = 4
    tr.log_every = 2
    config.sampling.num_steps = 5
    config.sampling.num_samples = 16
    config.sampling.batch_size = 16
    config.eval.batch_size = 64
    config.eval.num_batches = 1
  return config
