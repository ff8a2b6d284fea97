"""VP-SDE score model on CLD-SGM's 3x3 "diamond" Gaussian mixture (the embedded
default; about two minutes on a 2-core CPU).

The README's first training command. Variants: ``:swiss_roll`` (CLD-SGM's multimodal
swiss roll: the five modes are found in minutes, but the thin spiral arms need far
longer training; CLD-SGM trains its toy model for 800k iterations), ``:smoke`` (a few
steps, for tests).
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "swiss_roll", "smoke")


def get_config(variant: str = ""):
  config = get_default_config()
  config.method = "sgm"
  config.data.name = "diamond"
  config.model.name = "mlp"
  config.model.hidden = 128
  config.model.num_hidden_layers = 4
  config.model.time_input = "positional"
  config.sde.name = "vpsde"  # tutorial: beta(t) linear from 0.1 to 20
  config.loss.weighting = "none"
  config.training.batch_size = 256
  config.training.num_train_steps = 12_000
  config.training.log_every = 500
  config.training.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.schedule = "cosine"
  config.optim.min_lr_ratio = 0.05
  config.sampling.method = "euler_maruyama"
  config.sampling.num_steps = 500
  config.sampling.num_samples = 5000
  config.sampling.batch_size = 5000
  config.eval.batch_size = 1000
  config.checkpoint.every_steps = 2000
  config.checkpoint.permanent_every_steps = 10_000
  if variant == "swiss_roll":
    config.data.name = "swiss_roll"
  elif variant == "smoke":
    config.training.batch_size = 64
    config.training.num_train_steps = 20
    config.training.log_every = 5
    config.sampling.num_steps = 20
    config.sampling.num_samples = 256
    config.sampling.batch_size = 256
    config.eval.batch_size = 500
    config.checkpoint.every_steps = 10
  elif variant:
    raise ValueError(f"configs/sgm_toy.py: unknown variant {variant!r} (swiss_roll, smoke)")
  return config
