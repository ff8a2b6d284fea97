"""LSGM on CIFAR-10: the three models of the NVlabs/LSGM README ("balanced", "best FID",
"best NLL"), each a VAE stage (``train_vae.py``) and a joint stage (``train_vada.py``).

  python -m lsgm_jax.main --config=configs/lsgm_cifar.py:balanced_vae --workdir=$W/vae1
  python -m lsgm_jax.main --config=configs/lsgm_cifar.py:balanced \
      --config.lsgm.vae_checkpoint=$W/vae1 --workdir=$W/lsgm1

Global batches are the commands' per-GPU batch x GPUs: VAE 32 x 8 (vae1/2), 64 x 4
(vae3); joint 16 x 16. Epochs become steps at 50,000 images per epoch. The README's
``--arch_instance_dae res_ho_attn`` is not a flag of train_vada.py (REFERENCE_NOTES) and
is dropped; ``--custom_conv_dae`` (lsgm1/2) turns the SGM's spectral regularisation off,
which ``lsgm.dae_spectral_reg = False`` reproduces (its GroupNorm weight decay stays).

Variants: balanced_vae, balanced, best_fid_vae, best_fid, best_nll_vae, best_nll, and
best_fid_cld: the best-FID model with latent CLD (``methods/lsgm_cld.py``; issue 14): the
same stage-1 VAE (best_fid_vae) and NCSN++ latent score model, its input the 2 x 180
channels of (z, v), CLD with the CLD-SGM image settings (beta 4, M^-1 4, gamma 0.04), HSM,
CLD-SGM's noise-prediction loss for the SGM and the likelihood bound for the VAE.
Parameter counts (pinned in tests/test_lsgm_method.py): NVAE 100,867,740 (vae1/2),
130,622,772 (vae3); SGM 375,561,064 (mixing logit included).
"""

from lsgm_jax.config_defaults import get_lsgm_config
from lsgm_jax.presets.nvae import nvae_cifar10_config, set_vae_fields

VARIANTS = ("balanced_vae", "balanced", "best_fid_vae", "best_fid", "best_nll_vae", "best_nll",
            "best_fid_cld")
CIFAR_TRAIN = 50_000


def _nvae(config, vae3: bool) -> None:
  # vae1 and vae2 share an architecture (they differ in KL annealing, set above).
  set_vae_fields(config.lsgm.vae, nvae_cifar10_config("vae3" if vae3 else "vae1"))


def get_config(variant: str = "balanced_vae"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/lsgm_cifar.py: {VARIANTS}")
  cld = variant == "best_fid_cld"
  model_name = variant.replace("_vae", "").replace("_cld", "")
  vae3 = model_name == "best_nll"
  if variant.endswith("_vae"):
    batch = 256
    epochs = {"balanced": 600, "best_fid": 400, "best_nll": 400}[model_name]
    config = get_lsgm_config("train_vae", CIFAR_TRAIN // batch, epochs)
    config.training.batch_size = batch
    config.lsgm.weight_decay_norm_vae = 1e-2  # --weight_decay_norm 1e-2
    config.lsgm.kl_anneal_portion = 0.5 if model_name == "balanced" else 1.0
    config.lsgm.kl_max_coeff = 1.0 if model_name == "balanced" else 0.7
  else:
    batch = 256
    config = get_lsgm_config("train_vada", CIFAR_TRAIN // batch, 1875)
    config.training.batch_size = batch
    lc = config.lsgm
    lc.dae_optim.lr = 1e-4
    lc.weight_decay_norm_vae = 1e-2
    lc.weight_decay_norm_dae = 1e-2
    lc.dae_spectral_reg = vae3  # lsgm1/2 pass --custom_conv_dae
    lc.mixing_logit_init = -3.0
    config.model.nf = 512
    config.model.fir = True
    lc.ode_eps = 1e-6  # --eval_ode_eps
    if vae3:
      lc.sde_type = "geometric_sde"
      lc.sigma2_min = lc.sigma2_0 = 3e-5
      lc.sigma2_max = 0.999
      lc.time_eps = 0.0
      lc.iw_sample_p = "ll_uniform"
    else:
      lc.sde_type = "vpsde"
      config.sde.beta_min, config.sde.beta_max = 0.1, 20.0
      lc.sigma2_0 = 0.0
      lc.time_eps = 0.01
      lc.iw_sample_p = "drop_all_iw"
    lc.iw_sample_q = "reweight_p_samples"
    # KL warm-up across the stages: vae1 ends at 1.0 (no annealing in lsgm1); vae2/3 end
    # at 0.7 and lsgm2/3 continue from there (--cont_kl_anneal, kl_const_coeff_vada 0.7).
    lc.cont_kl_anneal = model_name != "balanced"
    lc.kl_const_coeff_vada = 0.7
  if cld:
    lc = config.lsgm
    lc.sde_type = "cld"
    lc.cld_objective = "hsm"
    # config.sde keeps its defaults: CLD-SGM's SDE (beta 4, M^-1 4, gamma 0.04).
    lc.time_eps = 1e-5  # CLD-SGM loss_eps; the velocity marginal moves fast near t = 0
    lc.iw_sample_p = "drop_all_uniform"  # CLD-SGM "reweightedv2"
    lc.iw_sample_q = "ll_iw"  # likelihood bound, log-uniform t
    config.sampling.method = "sscs"
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True
  _nvae(config, vae3)
  return config
