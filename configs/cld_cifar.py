"""CLD-SGM on CIFAR-10: the CLD paper's model (nv-tlabs/CLD-SGM configs/default_cifar10.txt
+ specific_cifar10.txt). NCSN++ with 107,593,859 trainable parameters.

Variants: ``:smoke`` (batch 2, for a CPU test of the real paper-size step).
"""

from lsgm_jax.config_defaults import get_cld_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = get_cld_config()
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.centered = True  # center_image = true
  config.data.random_flip = True
  config.data.dequantize = True  # likelihood evaluation on dequantised data

  model = config.model
  model.name = "ncsnpp"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 8
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual"
  model.progressive_combine = "sum"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  model.fourier_log_t = True
  model.mixed_score = True

  config.sde.cld_numerical_eps = 1e-9
  # Batch 128: the CLD-SGM README's two-node command (8 per GPU on 16 GPUs).
  config.training.batch_size = 128
  config.training.num_train_steps = 800_000
  config.training.ema_decay = 0.9999
  config.training.log_every = 5000
  config.training.eval_every = 20_000
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 100_000
  config.optim.schedule = "constant"
  config.checkpoint.every_steps = 10_000
  config.checkpoint.permanent_every_steps = 50_000
  config.sampling.num_steps = 1000
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  config.eval.batch_size = 128
  config.eval.num_batches = 1
  if variant == "smoke":
    config.training.batch_size = 2
    config.training.num_train_steps = 2
    config.eval.batch_size = 2
  elif variant:
    raise ValueError(f"configs/cld_cifar.py: unknown variant {variant!r} (smoke)")
  return config
