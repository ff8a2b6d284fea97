"""Every configuration field and its default, in one place.

Config files under ``configs/`` start from ``get_default_config()`` and override only
what differs from it. The returned ConfigDict is locked, so a misspelt field in a config
file or a ``--config.a.b=value`` override fails at start (``lsgm_jax.config_checks``
turns that into one line naming the field).
"""

from __future__ import annotations

import ml_collections


def get_default_config() -> ml_collections.ConfigDict:
  """Returns the locked default configuration shared by every family."""
  config = ml_collections.ConfigDict()
  # Which family trains: one of lsgm_jax.methods.METHODS.
  config.method = "sgm"
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.name = "swiss_roll"  # see lsgm_jax.data for the list
  data.image_size = 0  # 0 for 2-D data
  data.num_channels = 0
  data.centered = True  # images in [-1, 1] (score_sde); False -> [0, 1] (NVAE/LSGM)
  data.dequantize = False  # uniform dequantisation of 8-bit data (likelihood training)
  data.random_flip = False
  data.binarize = False  # dynamic binarisation (binarized MNIST / omniglot in NVAE)
  data.pad_to = 0  # pad images to this size (NVAE pads MNIST 28 -> 32); 0 = no padding
  data.data_dir = ""  # TFDS data_dir; "" = the TFDS default (~/tensorflow_datasets)
  data.num_toy_eval = 10_000  # held-out examples of the 2-D toy sets
  data.shuffle_buffer = 10_000

  config.model = model = ml_collections.ConfigDict()
  model.name = "mlp"  # one of lsgm_jax.models.registry.MODELS
  # MLP score net (2-D data).
  model.hidden = 128
  model.num_hidden_layers = 4
  model.time_input = "raw"  # raw t appended to the input | "fourier"
  # Convolutional score nets (U-Net, NCSN++).
  model.nf = 64
  model.ch_mult = (1, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = ()
  model.dropout = 0.0
  model.fourier_scale = 16.0
  model.embedding_type = "positional"  # positional | fourier
  model.resblock_type = "biggan"  # biggan | ddpm
  model.progressive = "none"  # output pyramid: none | output_skip | residual
  model.progressive_input = "none"  # input pyramid: none | input_skip | residual
  model.progressive_combine = "sum"
  model.fourier_log_t = True  # CLD-SGM applies the Fourier embedding to log t
  model.time_scale = 999.0  # positional embedding of time_scale * t
  model.remat = False  # rematerialise residual blocks (memory for compute)
  # CLD-SGM "mixed score": the Gaussian velocity score plus -l_t times the network.
  model.mixed_score = False
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.init_scale = 0.0
  model.conditional = True  # time-conditional

  config.sde = sde = ml_collections.ConfigDict()
  sde.name = "vpsde"  # vpsde | subvpsde | vesde | cld
  sde.beta_min = 0.1  # score_sde VP defaults (tutorial: beta(t) linear in [0.1, 20])
  sde.beta_max = 20.0
  sde.sigma_min = 0.01  # VE
  sde.sigma_max = 50.0
  # CLD (CLD paper): beta, M^-1, gamma, numerical eps.
  sde.cld_beta = 4.0  # beta(t) = cld_beta + cld_beta1 * t
  sde.cld_beta1 = 0.0
  sde.cld_m_inv = 4.0
  sde.cld_gamma = 0.04
  sde.cld_numerical_eps = 1e-9

  config.loss = loss = ml_collections.ConfigDict()
  # Scalar SDEs: none (lambda = sigma^2) | likelihood (g^2) | simple (eps).
  # CLD: reweightedv1 | reweightedv2 | likelihood.
  loss.weighting = "none"
  loss.objective = "dsm"  # dsm | hsm (hybrid score matching, CLD only)
  loss.eps = 1e-5  # t ~ U(loss.eps, 1)

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 256  # global batch, over all processes
  training.num_microbatches = 1  # gradient accumulation
  training.num_train_steps = 10_000
  training.log_every = 100
  training.eval_every = 0  # 0 = never during training
  training.sample_every = 0  # 0 = never during training
  training.ema_decay = 0.999
  training.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
  # Skip guard: a step whose loss or grad norm is non-finite or whose grad norm exceeds
  # skip_threshold is not applied; max_consecutive_skips in a row stop the run.
  training.skip_threshold = 0.0  # 0 = only non-finite steps are skipped
  training.max_consecutive_skips = 20

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"  # adam | adamw | adamax
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup_steps = 0
  optim.schedule = "constant"  # constant | cosine | linear (after warm-up)
  optim.min_lr_ratio = 0.0  # final lr / lr for cosine and linear decay
  optim.grad_clip = 1.0  # global-norm clipping; 0 = off

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "euler_maruyama"  # one of lsgm_jax.samplers.SAMPLERS
  sampling.num_steps = 1000
  sampling.eps = 1e-3
  sampling.denoise = True
  sampling.num_samples = 1000
  sampling.batch_size = 1000

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 1000
  ev.num_batches = 0  # 0 = one full pass over the held-out split
  # Negative log-likelihood (bits/dim) through the probability-flow ODE (tutorial;
  # Hutchinson trace estimator). Costly: hundreds of network calls per batch.
  ev.likelihood = False
  ev.ode_rtol = 1e-5
  ev.ode_atol = 1e-5
  ev.probe = "rademacher"  # rademacher | gaussian

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 1000  # the "recent" set
  ckpt.keep = 3
  ckpt.permanent_every_steps = 0  # the "permanent" set, never deleted; 0 = none
  ckpt.async_save = True

  config.parallel = par = ml_collections.ConfigDict()
  # Mesh axis sizes; -1 takes all remaining devices. The batch is split over both axes;
  # params larger than fsdp_min_size are sharded over "fsdp" (ZeRO-3 style).
  par.data = -1
  par.fsdp = 1
  par.fsdp_min_size = 2**18

  config.lock()
  return config


def get_cld_config() -> ml_collections.ConfigDict:
  """Defaults shared by the CLD-SGM configs (nv-tlabs/CLD-SGM configs/default_*.txt).

  CLD paper: beta = 4, M^-1 = 4 (M = 0.25, Gamma = 2 sqrt(M) = 1: critical damping),
  gamma = 0.04 (initial velocity variance gamma M), hybrid score matching, reweightedv2.
  """
  config = get_default_config()
  config.method = "sgm"
  config.sde.name = "cld"
  config.sde.cld_beta = 4.0
  config.sde.cld_beta1 = 0.0
  config.sde.cld_m_inv = 4.0
  config.sde.cld_gamma = 0.04
  config.loss.objective = "hsm"
  config.loss.weighting = "reweightedv2"
  config.loss.eps = 1e-5
  config.optim.optimizer = "adam"
  config.optim.grad_clip = 1.0
  config.optim.weight_decay = 0.0
  config.sampling.method = "sscs"
  config.sampling.eps = 1e-3
  config.sampling.denoise = True
  return config
