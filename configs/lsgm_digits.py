"""LSGM on the embedded 8x8 digits, dynamically binarised (CPU-sized; both stages train in
minutes on 2 cores). The same recipe as the MNIST README commands, scaled down: an NVAE
with a Bernoulli decoder and res_mbconv cells, then the joint stage with a small NCSN++
prior over the 4x4 latents, VP SDE, ``ll_iw`` for p (the same likelihood objective for q),
mixed score with logit init -6, continued KL annealing from the stage-1 value, and
drop_inactive_var.

  python -m lsgm_jax.main --config=configs/lsgm_digits.py:vae --workdir=runs/lsgm_digits_vae
  python -m lsgm_jax.main --config=configs/lsgm_digits.py:lsgm --workdir=runs/lsgm_digits

Variants: ``vae`` (stage 1), ``lsgm`` (stage 2, reads runs/lsgm_digits_vae unless
``--config.lsgm.vae_checkpoint`` says otherwise), ``vae_smoke``, ``lsgm_smoke``, and
``cld`` / ``cld_smoke``: stage 2 with latent CLD (``methods/lsgm_cld.py``, issue 14): CLD on
(z, v) with HSM, one likelihood objective for p and q (log-uniform t from 1e-5), the
mixed velocity score, SSCS sampling and the CLD ODE bound in the NELBO.
"""

from lsgm_jax.config_defaults import get_default_config

VARIANTS = ("vae", "lsgm", "vae_smoke", "lsgm_smoke", "cld", "cld_smoke")
STAGE1_KL_MAX = 0.7  # stage 1 ends its KL warm-up here; stage 2 continues from it


def get_config(variant: str = "vae"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/lsgm_digits.py: {VARIANTS}")
  config = get_default_config()
  config.method = "lsgm"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True
  config.data.binarize = True  # NVAE/LSGM dynamic binarisation

  vae = config.lsgm.vae
  vae.num_channels_enc = 32
  vae.num_channels_dec = 32
  vae.num_preprocess_blocks = 1
  vae.num_preprocess_cells = 2
  vae.num_postprocess_blocks = 1
  vae.num_postprocess_cells = 2
  vae.num_latent_scales = 1
  vae.num_groups_per_scale = 2
  vae.num_latent_per_group = 4
  vae.num_cell_per_cond_enc = 1
  vae.num_cell_per_cond_dec = 1
  vae.channel_mult = (1, 2)
  # res_bnswish, not MNIST's res_mbconv: XLA's CPU depthwise convolutions made the
  # MBConv cells ~8x slower per step on the 2-core CPU.
  vae.arch_instance = "res_bnswish"
  vae.use_se = True
  vae.decoder_dist = "bin"

  config.training.batch_size = 64
  config.training.log_every = 200
  config.training.ema_decay = 0.0  # the reference NVAE keeps no EMA
  config.optim.grad_clip = 0.0  # --grad_clip_max_norm 0
  config.checkpoint.every_steps = 1000
  config.eval.batch_size = 297  # the whole held-out split
  config.sampling.num_samples = 100
  config.sampling.batch_size = 100
  config.lsgm.weight_decay_norm_vae = 1e-2
  config.lsgm.decoder_output = "mean"

  stage1 = variant.startswith("vae")
  if stage1:
    # train_vae.py: Adamax, lr 1e-2 cosine to 1e-4, weight decay 3e-4, eps 1e-3.
    config.lsgm.stage = "train_vae"
    config.training.num_train_steps = 3000
    config.optim.optimizer = "adamax"
    config.optim.lr = 1e-2
    config.optim.eps = 1e-3
    config.optim.weight_decay = 3e-4
    config.optim.warmup_steps = 200
    config.optim.schedule = "cosine"
    config.optim.min_lr_ratio = 0.01
    config.lsgm.kl_anneal_portion = 1.0
    config.lsgm.kl_const_portion = 0.0001
    config.lsgm.kl_const_coeff = 0.0001
    config.lsgm.kl_max_coeff = STAGE1_KL_MAX
  else:
    config.lsgm.stage = "train_vada"
    config.lsgm.vae_checkpoint = "runs/lsgm_digits_vae"
    config.training.num_train_steps = 2500
    config.training.ema_decay = 0.999
    # train_vada.py: VAE Adam(W) lr 1e-4 cosine to 1e-5, eps 1e-3; SGM lr 3e-4, eps 1e-4.
    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4 * 5  # scaled up for the short CPU run (the README uses 1e-4)
    config.optim.eps = 1e-3
    config.optim.weight_decay = 3e-4
    config.optim.warmup_steps = 200
    config.optim.schedule = "cosine"
    config.optim.min_lr_ratio = 0.1
    dae = config.lsgm.dae_optim
    dae.optimizer = "adamw"
    dae.lr = 1e-3
    dae.eps = 1e-4
    dae.weight_decay = 3e-4
    dae.warmup_steps = 200
    dae.schedule = "constant"
    config.lsgm.sde_type = "vpsde"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0
    config.lsgm.sigma2_0 = 0.0
    config.lsgm.time_eps = 1e-2
    config.lsgm.iw_sample_p = "ll_iw"
    config.lsgm.iw_sample_q = "reweight_p_samples"
    config.lsgm.mixed_prediction = True
    config.lsgm.mixing_logit_init = -6.0
    config.lsgm.drop_inactive_var = True
    config.lsgm.drop_inactive_num_batches = 20
    config.lsgm.cont_kl_anneal = True
    config.lsgm.kl_anneal_portion_vada = 0.1
    config.lsgm.kl_const_coeff_vada = STAGE1_KL_MAX
    config.lsgm.kl_max_coeff_vada = 1.0
    config.lsgm.weight_decay_norm_dae = 0.0
    config.lsgm.embedding_dim = 32
    config.lsgm.ode_eps = 1e-5
    model = config.model
    model.name = "ncsnpp"
    model.nf = 32
    model.ch_mult = (1, 1)
    model.num_res_blocks = 2
    model.attn_resolutions = (2,)
    model.dropout = 0.0
    model.fir = False
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "none"
    model.init_scale = 0.0
    model.embedding_type = "positional"
    model.time_scale = 1000.0
    config.sampling.method = "probability_flow_ode"
    config.sampling.denoise = False
    config.eval.likelihood = True
    config.eval.ode_rtol = 1e-5
    config.eval.ode_atol = 1e-5

  if variant.startswith("cld"):
    lc = config.lsgm
    lc.sde_type = "cld"
    lc.cld_objective = "hsm"
    # config.sde keeps its defaults: CLD-SGM's SDE (beta 4, M^-1 4, gamma 0.04).
    lc.time_eps = 1e-5
    lc.iw_sample_p = "ll_iw"
    lc.iw_sample_q = "reweight_p_samples"
    config.sampling.method = "sscs"
    config.sampling.num_steps = 100

  if variant.endswith("smoke"):
    config.training.batch_size = 8
    config.training.num_train_steps = 2
    config.training.log_every = 1
    config.optim.warmup_steps = 0
    config.lsgm.dae_optim.warmup_steps = 0
    config.lsgm.drop_inactive_num_batches = 2
    config.sampling.num_samples = 8
    config.sampling.batch_size = 8
    config.eval.batch_size = 8
    config.eval.num_batches = 1
    config.eval.ode_rtol = 1e-3
    config.eval.ode_atol = 1e-3
    vae.num_channels_enc = vae.num_channels_dec = 8
    vae.num_preprocess_cells = vae.num_postprocess_cells = 1
    vae.arch_instance = "res_bnswish"
    if not stage1:
      config.lsgm.vae_checkpoint = ""  # set by the test
      config.model.nf = 16
      config.model.num_res_blocks = 1
      config.model.ch_mult = (1,)
      config.model.attn_resolutions = ()
      config.lsgm.embedding_dim = 16
  return config
