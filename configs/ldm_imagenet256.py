"""Latent diffusion on ImageNet 256x256 (Rombach et al. 2022): the ``sgm`` method (VP)
on the 32x32x4 latents of LDM's kl-f8 autoencoder (``configs/autoencoder_imagenet256.py``,
83,653,863 parameters), samples decoded through it.

First stage: the published kl-f8 checkpoint, encoded once:

  python -m lsgm_jax.main --config=configs/autoencoder_imagenet256.py:pretrained \
      --workdir=runs/ae_imagenet256 --mode=encode
  python -m lsgm_jax.main --config=configs/ldm_imagenet256.py --workdir=runs/ldm_in256 \
      --config.data.name=latents --config.data.latents_dir=runs/ae_imagenet256/latents

Score network: the DDPM U-Net at the widths of LDM's f = 8 ImageNet model
(``configs/latent-diffusion/cin-ldm-vq-f8.yaml``: model_channels 256, channel_mult
1,2,4, 2 residual blocks, attention at 32, 16, 8), unconditional. It is not LDM's
openaimodel UNet: no class cross-attention transformers, no scale-shift norm, no
residual up/down-sampling blocks, so it has fewer parameters than LDM's (the count of
this one is pinned in tests/test_ldm.py). Noise: LDM's 1000 discrete betas run from
0.0015 to 0.0195 (linear in sqrt(beta)); the continuous VP SDE here is linear in beta
with the same ends, beta(t) in [1.5, 19.5]. Training: LDM's batch 48; its learning rate
(base 1e-6 scaled by the batch, AdamW) is replaced by Adam 1e-4 with warm-up and EMA
0.9999, the recipe of this codebase's other score models.

Variants: ``:smoke`` is not offered (a 256 model does not run on CPU); the tests trace
it with ``jax.eval_shape`` only.
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("",)


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"configs/ldm_imagenet256.py: unknown variant {variant!r}")
  config = get_default_config()
  config.method = "sgm"
  config.data.name = "imagenet256"
  config.data.image_size = 256
  config.data.centered = True
  config.data.random_flip = True
  config.data.dequantize = False
  config.ldm.latent_shape = (32, 32, 4)
  # An LDM .ckpt is decoded with config.autoencoder's architecture (the kl-f8 preset);
  # an autoencoder workdir (runs/ae_imagenet256) works too.
  config.ldm.first_stage = "kl-f8/model.ckpt"
  config.autoencoder.preset = "kl-f8"
  config.autoencoder.latent_norm = "global"

  model = config.model
  model.name = "unet"
  model.nf = 256
  model.ch_mult = (1, 2, 4)
  model.num_res_blocks = 2
  model.attn_resolutions = (32, 16, 8)
  model.dropout = 0.0
  config.sde.name = "vpsde"
  config.sde.beta_min = 1.5  # 1000 x LDM's linear_start 0.0015
  config.sde.beta_max = 19.5  # 1000 x LDM's linear_end 0.0195
  config.loss.weighting = "none"

  tr = config.training
  tr.batch_size = 48  # cin-ldm-vq-f8.yaml
  tr.num_train_steps = 500_000
  tr.log_every = 100
  tr.ema_decay = 0.9999
  config.optim.lr = 1e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  config.sampling.method = "ddim"
  config.sampling.num_steps = 200
  config.sampling.num_samples = 16
  config.sampling.batch_size = 16
  config.eval.batch_size = 64
  config.checkpoint.every_steps = 5000
  config.checkpoint.permanent_every_steps = 50_000
  return config
