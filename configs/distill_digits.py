"""Progressive distillation (Salimans & Ho 2022, Algorithm 2) of the digits VP model.

The teacher is ``configs/sgm_digits.py:v`` (v-prediction, as the paper's teachers), whose
DDIM sampler at 256 steps is the starting point; six rounds halve it to 4 steps
(256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4), all in one run, a permanent checkpoint at the
end of every round:

  python -m lsgm_jax.main --config=configs/sgm_digits.py:v --workdir=runs/sgm_digits_v
  python -m lsgm_jax.main --config=configs/distill_digits.py --workdir=runs/distill_digits
  python -m lsgm_jax.main --config=configs/distill_digits.py --workdir=runs/distill_digits \
      --mode=sample   # the last round's student: 4 DDIM steps

Recipe of the authors' distillation configs (google-research/diffusion_distillation
``config/cifar_distill.py``): the teacher's architecture, Adam, learning rate annealed
linearly to 0 over each round (here 5e-4 instead of 5e-5: a short CPU budget), no EMA,
gradient clipping 1, x-space loss with the truncated-SNR weight.

Variants: ``:eps`` (an eps-prediction teacher, ``configs/sgm_digits.py`` itself; the v
student then starts away from it), ``:smoke``.
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "eps", "smoke")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/distill_digits.py: unknown variant {variant!r} "
                     f"(one of {VARIANTS})")
  config = get_default_config()
  config.method = "distill"
  # The teacher's data, model and SDE (configs/sgm_digits.py).
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
  config.model.dropout = 0.0  # the authors distil with dropout 0
  config.model.prediction = "v"
  config.sde.name = "vpsde"

  dist = config.distill
  dist.teacher_checkpoint = "runs/sgm_digits_v"
  dist.teacher_steps = 256
  dist.steps_per_round = 400
  tr = config.training
  tr.batch_size = 128
  tr.num_train_steps = 6 * dist.steps_per_round  # 256 -> 4 steps
  tr.log_every = 100
  tr.ema_decay = 0.0
  op = config.optim
  op.optimizer = "adam"
  op.lr = 5e-4
  op.warmup_steps = 0
  op.schedule = "linear"
  op.min_lr_ratio = 0.0
  op.grad_clip = 1.0
  config.checkpoint.every_steps = dist.steps_per_round
  config.checkpoint.permanent_every_steps = dist.steps_per_round
  config.sampling.method = "ddim"
  config.sampling.eps = 1e-3
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.eval.batch_size = 297
  if variant == "eps":
    config.model.prediction = "eps"
    dist.teacher_checkpoint = "runs/sgm_digits"
  elif variant == "smoke":
    dist.teacher_steps = 8
    dist.steps_per_round = 2
    tr.batch_size = 16
    tr.num_train_steps = 4
    tr.log_every = 2
    config.checkpoint.every_steps = 2
    config.checkpoint.permanent_every_steps = 2
    config.sampling.num_samples = 16
    config.sampling.batch_size = 16
    config.eval.batch_size = 64
    config.eval.num_batches = 1
  return config
