"""The latent VAE paper's ImageNet-256 first stage (§4.3: "an f = 8 autoencoder from
Rombach et al. (2022)"): LDM's kl-f8 AutoencoderKL, 256x256x3 -> 32x32x4 latents,
83,653,863 parameters, with LDM's loss (L1 + LPIPS + patch hinge GAN from step 50,001,
kl_weight 1e-6, disc_weight 0.5, Adam betas (0.5, 0.9), lr 4.5e-6 x batch).

The paper did not train it: it used the published checkpoint. To do the same, set
``--config.autoencoder.init_checkpoint=/path/to/kl-f8/model.ckpt`` (converted on a
fresh start; ``--mode=encode`` alone also reads it). Training needs LPIPS-VGG weights
as an npz (layout in lsgm_jax/models/perceptual.py) at ``perceptual_weights_path``.

Variants: ``:pretrained`` (no perceptual file needed: encode with the LDM checkpoint).
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("", "pretrained")


def get_config(variant: str = ""):
  config = get_default_config()
  config.method = "autoencoder"
  config.data.name = "imagenet256"
  config.data.image_size = 256
  config.data.centered = True
  config.data.random_flip = True

  ae = config.autoencoder
  ae.preset = "kl-f8"  # models/first_stage_models/kl-f8/config.yaml
  ae.l1_weight = 1.0
  ae.perceptual_weight = 1.0
  ae.perceptual_weights_path = "lpips_vgg16.npz"
  ae.kl_weight = 1e-6
  ae.adversarial_weight = 0.5
  ae.disc_start = 50_001
  ae.disc_layers = 3
  ae.disc_ndf = 64
  ae.latent_norm = "global"

  config.training.batch_size = 32
  config.training.num_train_steps = 500_000
  config.training.log_every = 100
  config.optim.lr = 4.5e-6 * 32  # LDM: base_learning_rate x batch size
  config.optim.beta1 = 0.5
  config.optim.beta2 = 0.9
  config.optim.grad_clip = 0.0
  config.checkpoint.every_steps = 5000
  config.eval.batch_size = 64
  config.sampling.num_samples = 16
  config.sampling.batch_size = 16
  if variant == "pretrained":
    ae.perceptual_weight = 0.0
    ae.perceptual_weights_path = ""
    ae.init_checkpoint = "kl-f8/model.ckpt"
  elif variant:
    raise ValueError(f"configs/autoencoder_imagenet256.py: unknown variant {variant!r} "
                     "(pretrained)")
  return config
