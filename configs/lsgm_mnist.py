"""LSGM on dynamically binarised MNIST (NVlabs/LSGM README), 28x28 padded to 32.

  python -m lsgm_jax.main --config=configs/lsgm_mnist.py:vae --workdir=$W/vae
  python -m lsgm_jax.main --config=configs/lsgm_mnist.py:lsgm \
      --config.lsgm.vae_checkpoint=$W/vae --workdir=$W/lsgm

VAE: batch 100 x 2 GPUs, 200 epochs; joint: batch 32 x 4 GPUs, 800 epochs, VP SDE,
ll_iw for p and (reweighted) for q, mixing logit -6, 20 warm-up epochs, drop_inactive_var,
continued KL annealing from the VAE's 0.7. Counts: NVAE 3,005,822; SGM 63,774,544.

Variants: vae, lsgm.
"""

from lsgm_jax.config_defaults import get_lsgm_config
from lsgm_jax.presets.nvae import nvae_mnist_config, set_vae_fields

VARIANTS = ("vae", "lsgm")
MNIST_TRAIN = 60_000


def get_config(variant: str = "vae"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/lsgm_mnist.py: {VARIANTS}")
  if variant == "vae":
    config = get_lsgm_config("train_vae", MNIST_TRAIN // 200, 200)
    config.training.batch_size = 200
    config.lsgm.weight_decay_norm_vae = 1e-2
    config.lsgm.kl_anneal_portion = 1.0
    config.lsgm.kl_max_coeff = 0.7
  else:
    config = get_lsgm_config("train_vada", MNIST_TRAIN // 128, 800, warmup_epochs=20)
    config.training.batch_size = 128
    lc = config.lsgm
    lc.dae_optim.lr = 3e-4
    lc.weight_decay_norm_vae = 1e-2
    lc.weight_decay_norm_dae = 0.0
    lc.sde_type = "vpsde"
    config.sde.beta_min, config.sde.beta_max = 0.1, 20.0
    lc.iw_sample_p = "ll_iw"
    lc.iw_sample_q = "reweight_p_samples"
    lc.mixing_logit_init = -6.0
    lc.drop_inactive_var = True
    lc.cont_kl_anneal = True
    lc.kl_const_coeff_vada = 0.7
    lc.ode_eps = 1e-5
    config.model.nf = 256
    config.model.ch_mult = (1, 1)
  config.data.name = "mnist"
  config.data.image_size = 32
  config.data.num_channels = 1
  config.data.binarize = True
  config.data.pad_to = 32
  set_vae_fields(config.lsgm.vae, nvae_mnist_config())
  return config
