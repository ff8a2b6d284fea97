"""LSGM on dynamically binarised Omniglot (NVlabs/LSGM README), 28x28 padded to 32.

  python -m lsgm_jax.main --config=configs/lsgm_omniglot.py:vae --workdir=$W/vae
  python -m lsgm_jax.main --config=configs/lsgm_omniglot.py:lsgm \
      --config.lsgm.vae_checkpoint=$W/vae --workdir=$W/lsgm

VAE: batch 64 x 2 GPUs, 200 epochs, 3 groups x 20 channels at 16x16; joint: batch
32 x 4 GPUs, 1500 epochs, SGM 256 channels over 3 levels, ll_iw, mixing logit -6,
wdn_dae 1e-3. Epochs are counted on the TFDS ``omniglot`` train split (19,280 images;
the reference reads NVAE's 24,345-image split, so its epochs are ~26% longer).

Variants: vae, lsgm.
"""

from lsgm_jax.config_defaults import get_lsgm_config

VARIANTS = ("vae", "lsgm")
OMNIGLOT_TRAIN = 19_280


def get_config(variant: str = "vae"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/lsgm_omniglot.py: {VARIANTS}")
  if variant == "vae":
    config = get_lsgm_config("train_vae", OMNIGLOT_TRAIN // 128, 200)
    config.training.batch_size = 128
    config.lsgm.weight_decay_norm_vae = 1e-2
    config.lsgm.kl_anneal_portion = 1.0
    config.lsgm.kl_max_coeff = 1.0
  else:
    config = get_lsgm_config("train_vada", OMNIGLOT_TRAIN // 128, 1500, warmup_epochs=20)
    config.training.batch_size = 128
    lc = config.lsgm
    lc.dae_optim.lr = 3e-4
    lc.weight_decay_norm_vae = 1e-2
    lc.weight_decay_norm_dae = 1e-3
    lc.sde_type = "vpsde"
    config.sde.beta_min, config.sde.beta_max = 0.1, 20.0
    lc.iw_sample_p = "ll_iw"
    lc.iw_sample_q = "reweight_p_samples"
    lc.mixing_logit_init = -6.0
    lc.drop_inactive_var = True
    lc.cont_kl_anneal = True
    lc.kl_const_coeff_vada = 1.0  # the VAE stage already reached 1.0
    lc.ode_eps = 1e-5
    config.model.nf = 256
  config.data.name = "omniglot"
  config.data.image_size = 32
  config.data.num_channels = 1
  config.data.binarize = True
  config.data.pad_to = 32
  vae = config.lsgm.vae
  vae.num_channels_enc = vae.num_channels_dec = 64
  vae.num_preprocess_blocks = vae.num_postprocess_blocks = 1
  vae.num_preprocess_cells = vae.num_postprocess_cells = 2
  vae.num_cell_per_cond_enc = vae.num_cell_per_cond_dec = 3
  vae.num_latent_scales = 1
  vae.num_groups_per_scale = 3
  vae.num_latent_per_group = 20
  vae.channel_mult = (1, 2)
  vae.arch_instance = "res_mbconv"
  vae.use_se = True
  vae.num_nf = 0
  vae.decoder_dist = "bin"
  vae.crop_output = True
  return config
