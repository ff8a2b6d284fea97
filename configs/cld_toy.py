"""CLD-SGM on the multimodal swiss roll (nv-tlabs/CLD-SGM configs/default_toy_data.txt):
the toy MLP (5 -> 128 -> 128 -> 128 -> 128 -> 2, raw t input; 50,562 parameters), HSM
with reweightedv2, beta 4, M^-1 4, gamma 0.04, numerical eps 1e-6, Adam 1e-3, EMA 0.999,
batch 512. The reference trains 800k iterations; this CPU config trains 20k.

Variants: ``:diamond`` (the 3x3 Gaussian mixture), ``:smoke``.
"""

from lsgm_jax.config_defaults import get_cld_config

VARIANTS = ("", "diamond", "smoke")


def get_config(variant: str = ""):
  config = get_cld_config()
  config.data.name = "swiss_roll"
  config.model.name = "mlp"
  config.model.hidden = 128
  config.model.num_hidden_layers = 4
  config.model.time_input = "raw"
  config.sde.cld_numerical_eps = 1e-6
  config.training.batch_size = 512
  config.training.num_train_steps = 20_000
  config.training.ema_decay = 0.999
  config.training.log_every = 1000
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 0
  config.sampling.num_steps = 200
  config.sampling.num_samples = 5000
  config.sampling.batch_size = 5000
  config.eval.batch_size = 1000
  config.checkpoint.every_steps = 5000
  if variant == "diamond":
    config.data.name = "diamond"
  elif variant == "smoke":
    config.training.batch_size = 64
    config.training.num_train_steps = 10
    config.training.log_every = 5
    config.sampling.num_steps = 10
    config.sampling.num_samples = 128
    config.sampling.batch_size = 128
  elif variant:
    raise ValueError(f"configs/cld_toy.py: unknown variant {variant!r} (diamond, smoke)")
  return config
