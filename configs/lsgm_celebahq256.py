"""LSGM on CelebA-HQ-256, the quantitative model of the NVlabs/LSGM README.

  python -m lsgm_jax.main --config=configs/lsgm_celebahq256.py:vae --workdir=$W/vae
  python -m lsgm_jax.main --config=configs/lsgm_celebahq256.py:lsgm \
      --config.lsgm.vae_checkpoint=$W/vae --workdir=$W/lsgm

VAE: 3 latent scales x 8 groups x 20 channels, 2 flows per group, 5-bit logistic
mixture, channel_mult 1 1 2 4, batch 4 x 16 GPUs, 200 epochs. Joint: the SGM over the
top scale (8 groups x 20 = 160 channels at 32x32; 4 levels of 256 x 1, 2, 2, 2
channels, 8 blocks each, FIR; 408,367,680 parameters as the reference's), VP
SDE, drop_sigma2t_iw for p and ll_iw for q with disjoint training (Algorithm 2),
mixing logit -6, wdn 1e-1 (VAE) / 1e-2 (SGM), 1000 epochs. The NVAE's encoder has the
reference's input pyramid (``--progressive_input_vae input_skip``), so its trainable
parameter count equals the reference's (pinned in tests/test_nvae.py) and the
reference's files import with ``--config.checkpoint.import_format=lsgm``.

Variants: vae, lsgm.
"""

from lsgm_jax.config_defaults import get_lsgm_config

VARIANTS = ("vae", "lsgm")
CELEBAHQ_TRAIN = 27_000


def get_config(variant: str = "vae"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/lsgm_celebahq256.py: {VARIANTS}")
  batch = 64
  if variant == "vae":
    config = get_lsgm_config("train_vae", CELEBAHQ_TRAIN // batch, 200)
    config.lsgm.weight_decay_norm_vae = 3e-2
    config.lsgm.kl_anneal_portion = 1.0
    config.lsgm.kl_max_coeff = 1.0
  else:
    config = get_lsgm_config("train_vada", CELEBAHQ_TRAIN // batch, 1000, warmup_epochs=20)
    lc = config.lsgm
    lc.dae_optim.lr = 1e-4
    lc.weight_decay_norm_vae = 1e-1
    lc.weight_decay_norm_dae = 1e-2
    lc.sde_type = "vpsde"
    config.sde.beta_min, config.sde.beta_max = 0.1, 20.0
    lc.iw_sample_p = "drop_sigma2t_iw"
    lc.iw_sample_q = "ll_iw"
    lc.disjoint_training = True
    lc.mixing_logit_init = -6.0
    lc.drop_inactive_var = True
    lc.ode_eps = 1e-5
    config.model.nf = 256
    config.model.ch_mult = (1, 2, 2, 2)  # util/utils.py get_channel_multiplier (celeba_256, 4)
    config.model.fir = True
    config.model.remat = True
  config.training.batch_size = batch
  config.eval.batch_size = 64
  config.sampling.batch_size = 16
  config.sampling.num_samples = 16
  config.data.name = "celeb_a_hq"
  config.data.image_size = 256
  config.data.num_channels = 3
  config.data.random_flip = True
  vae = config.lsgm.vae
  vae.num_channels_enc = vae.num_channels_dec = 64
  vae.num_preprocess_blocks = vae.num_postprocess_blocks = 1
  vae.num_preprocess_cells = vae.num_postprocess_cells = 2
  vae.num_cell_per_cond_enc = vae.num_cell_per_cond_dec = 2
  vae.num_latent_scales = 3
  vae.num_groups_per_scale = 8
  vae.num_latent_per_group = 20
  vae.channel_mult = (1, 1, 2, 4)
  vae.arch_instance = "res_mbconv"
  vae.use_se = True
  vae.num_nf = 2
  vae.decoder_dist = "dml"
  vae.num_x_bits = 5
  vae.progressive_input_vae = "input_skip"
  return config
