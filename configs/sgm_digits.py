"""VP-SDE score model with a small U-Net on scikit-learn's embedded 8x8 digits (CPU-sized).

Variants: ``:v`` (the network predicts v = alpha eps - sigma x and trains on
||v - v_hat||^2, Salimans & Ho 2022 Sec. 4: the teacher of ``configs/distill_digits.py``),
``:smoke`` (a few steps, for tests).
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "v", "smoke")


def get_config(variant: str = ""):
  config = get_default_config()
  config.method = "sgm"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True
  config.data.dequantize = True
  config.model.name = "unet"
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = ()
  config.model.dropout = 0.0
  config.sde.name = "vpsde"
  config.training.batch_size = 128
  config.training.num_train_steps = 2500  # ~10 min on 2 CPU cores (4.1 steps/s)
  config.training.log_every = 200
  config.training.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.schedule = "cosine"
  config.optim.min_lr_ratio = 0.05
  config.sampling.num_steps = 500
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.eval.batch_size = 100
  config.checkpoint.every_steps = 1000
  if variant == "v":
    config.model.prediction = "v"
    config.loss.weighting = "v"
  elif variant == "smoke":
    config.training.batch_size = 16
    config.training.num_train_steps = 4
    config.training.log_every = 2
    config.sampling.num_steps = 5
    config.sampling.num_samples = 16
    config.sampling.batch_size = 16
    config.eval.batch_size = 64
    config.eval.num_batches = 1
  elif variant:
    raise ValueError(f"configs/sgm_digits.py: unknown variant {variant!r} (v, smoke)")
  return config
