"""CLD-SGM on CelebA-HQ-256 (nv-tlabs/CLD-SGM configs/*_celeba_paper.txt and
*_celeba_post_paper.txt).

Variants: ``""`` / ``:paper`` (the paper's model: 2 residual blocks per level, batch 64,
320k iterations) and ``:post_paper`` (4 blocks, linear beta 0.1 + 6.9 t, AdamW with weight
decay 1e-2, loss eps 1e-3, numerical eps 1e-6, batch 96, 600k iterations).
"""

from lsgm_jax.config_defaults import get_cld_config

VARIANTS = ("", "paper", "post_paper")


def get_config(variant: str = ""):
  config = get_cld_config()
  config.data.name = "celeb_a_hq"
  config.data.image_size = 256
  config.data.num_channels = 3
  config.data.centered = True
  config.data.random_flip = True

  model = config.model
  model.name = "ncsnpp"
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.fir = False
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.time_scale = 1.0  # CLD-SGM embeds raw t positionally
  model.mixed_score = True
  model.remat = True

  config.sde.cld_numerical_eps = 1e-6
  config.training.batch_size = 64
  config.training.num_train_steps = 320_000
  config.training.ema_decay = 0.9999
  config.training.log_every = 5000
  config.optim.lr = 1e-4
  config.optim.warmup_steps = 100_000
  config.checkpoint.every_steps = 10_000
  config.checkpoint.permanent_every_steps = 50_000
  config.sampling.num_samples = 16
  config.sampling.batch_size = 16
  config.eval.batch_size = 64
  config.eval.num_batches = 1
  if variant == "post_paper":
    model.num_res_blocks = 4
    config.sde.cld_beta = 0.1
    config.sde.cld_beta1 = 6.9
    config.optim.optimizer = "adamw"
    config.optim.weight_decay = 1e-2
    config.loss.eps = 1e-3
    config.training.batch_size = 96
    config.training.num_train_steps = 600_000
    config.eval.batch_size = 96
  elif variant not in ("", "paper"):
    raise ValueError(
        f"configs/cld_celebahq256.py: unknown variant {variant!r} (paper, post_paper)")
  return config
