"""DDPM++ cont. (VP) on CIFAR-10: score_sde's ``configs/vp/cifar10_ddpmpp_continuous.py``
(yang-song/score_sde and score_sde_pytorch), 61,804,419 trainable parameters (measured
with the reference's own model code; pinned in tests/test_checkpoint_import_score_sde.py).

NCSN++ with BigGAN residual blocks, no FIR, no pyramids, positional embedding of 999 t,
nf 128, ch_mult 1,2,2,2, 4 blocks per level, attention at 16. Its released checkpoints
import with ``--config.checkpoint.import_format=score_sde``.

No variants.
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("",)


def get_config(variant: str = ""):
  config = get_default_config()
  config.method = "sgm"
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.centered = True  # data.centered = True: the network sees [-1, 1] as given
  config.data.random_flip = True

  model = config.model
  model.name = "ncsnpp"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.time_scale = 999.0  # continuous VP: labels = 999 t (score_sde get_score_fn)

  config.sde.name = "vpsde"
  config.sde.beta_min = 0.1
  config.sde.beta_max = 20.0
  config.loss.weighting = "none"  # reduce_mean, no likelihood weighting: lambda = sigma^2
  config.loss.eps = 1e-5
  config.training.batch_size = 128
  config.training.num_train_steps = 1_300_000
  config.training.ema_decay = 0.9999
  config.training.log_every = 50
  config.optim.optimizer = "adam"
  config.optim.lr = 2e-4
  config.optim.beta1 = 0.9
  config.optim.eps = 1e-8
  config.optim.warmup_steps = 5000
  config.optim.schedule = "constant"
  config.optim.grad_clip = 1.0
  config.checkpoint.every_steps = 10_000
  config.checkpoint.permanent_every_steps = 50_000
  config.sampling.method = "euler_maruyama"  # pc: euler_maruyama predictor, no corrector
  config.sampling.num_steps = 1000
  config.sampling.eps = 1e-3
  config.sampling.denoise = True
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  config.eval.batch_size = 128
  config.eval.num_batches = 1
  if variant:
    raise ValueError(f"configs/vp_cifar_ddpmpp.py: unknown variant {variant!r} (none)")
  return config
