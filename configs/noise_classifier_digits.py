"""Noise-conditional classifier p_t(y | x_t) on the 8x8 digits, for classifier guidance of
``configs/sgm_digits.py`` (same VP SDE; issue 13).

Train, then sample the digits score model guided towards classes::

  python -m lsgm_jax.main --config=configs/noise_classifier_digits.py --workdir=runs/clf
  python -m lsgm_jax.main --config=configs/sgm_digits.py --workdir=runs/sgm_digits \
      --mode=sample --config.sampling.classifier_checkpoint=runs/clf \
      --config.sampling.guidance_scale=2.0 --config.sampling.class_labels="(3,)"

``--mode=eval`` reports the cross-entropy, the accuracy at t ~ U(eps, 1) and the accuracy
at t = 0, 0.1, 0.25, 0.5, 0.75, 1 (accuracy vs t). Variants: ``:smoke`` (a few steps).
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = get_default_config()
  config.method = "noise_classifier"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True
  config.data.dequantize = True
  # The encoder half of sgm_digits' U-Net, same time embedding (999 t, sinusoidal).
  config.model.name = "unet"
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = ()
  config.model.dropout = 0.0
  config.sde.name = "vpsde"
  config.training.batch_size = 128
  config.training.num_train_steps = 3000
  config.training.log_every = 200
  config.training.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.schedule = "cosine"
  config.optim.min_lr_ratio = 0.05
  config.eval.batch_size = 100
  config.checkpoint.every_steps = 1000
  if variant == "smoke":
    config.training.batch_size = 16
    config.training.num_train_steps = 4
    config.training.log_every = 2
    config.eval.batch_size = 64
    config.eval.num_batches = 1
    config.checkpoint.every_steps = 4
  elif variant:
    raise ValueError(f"configs/noise_classifier_digits.py: unknown variant {variant!r} (smoke)")
  return config
