"""CLD-SGM on scikit-learn's embedded 8x8 digits with a small NCSN++ (CPU-sized: trains in
minutes on 2 cores). Same process and objective as the CIFAR-10 model (HSM,
reweightedv2, mixed score), scaled down.

Variants: ``:smoke``.
"""

from lsgm_jax.config_defaults import get_cld_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = get_cld_config()
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True
  config.data.dequantize = True

  model = config.model
  model.name = "ncsnpp"
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.fir = True
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  model.mixed_score = True

  config.sde.cld_numerical_eps = 1e-9
  config.training.batch_size = 64
  config.training.num_train_steps = 2500  # ~10 min on 2 CPU cores (4.3 steps/s)
  config.training.ema_decay = 0.999
  config.training.log_every = 200
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.schedule = "cosine"
  config.optim.min_lr_ratio = 0.05
  config.checkpoint.every_steps = 1000
  config.sampling.num_steps = 200
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.eval.batch_size = 297  # the whole held-out split in one batch
  config.eval.likelihood = True
  config.eval.ode_rtol = 1e-4
  config.eval.ode_atol = 1e-4
  if variant == "smoke":
    config.training.batch_size = 8
    config.training.num_train_steps = 2
    config.training.log_every = 1
    config.sampling.num_steps = 4
    config.sampling.num_samples = 8
    config.sampling.batch_size = 8
    config.eval.batch_size = 8
    config.eval.num_batches = 1
    config.eval.likelihood = False
  elif variant:
    raise ValueError(f"configs/cld_digits.py: unknown variant {variant!r} (smoke)")
  return config
