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
  data.latents_dir = ""  # data.name="latents": <autoencoder workdir>/latents (--mode=encode)

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
  # Run each level's consecutive residual blocks of equal input shape as one nn.scan
  # (NCSN++ and the DDPM U-Net): the same network and parameter count, ~4x fewer block
  # bodies to compile (paper CLD CIFAR-10: 19 instead of 76). The parameter tree's layout
  # differs (stacked runs; lsgm_jax.models.scan_layout.to_unrolled_params /
  # to_scanned_params), so a checkpoint restores only with the setting it was written
  # with (a U-Net with one block per level, as on digits, is the same either way).
  model.scan_blocks = True
  # CLD-SGM "mixed score": the Gaussian velocity score plus -l_t times the network.
  model.mixed_score = False
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.init_scale = 0.0
  model.conditional = True  # time-conditional
  # The network sees 2x - 1 of data in [0, 1] (score_sde's DDPM with data.centered=False;
  # the ScoreVAE priors). Needs data.centered=False.
  model.center_input = False
  # What the network predicts for scalar SDEs: eps (score = -net / std) | v (VP only:
  # v = alpha eps - sigma x, Salimans & Ho 2022 Sec. 4; x_hat = alpha x_t - sigma net).
  model.prediction = "eps"

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
  # Scalar SDEs: none (lambda = sigma^2) | likelihood (g^2) | simple (eps) | v
  # (lambda = sigma^2 / alpha^2: ||v - v_hat||^2 for model.prediction="v").
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
  # Persistent XLA compilation cache (lsgm_jax/compile_cache.py): a rerun, resume, eval
  # or sample run loads the compiled programs instead of compiling for minutes. "" = off;
  # the environment's JAX_COMPILATION_CACHE_DIR takes precedence.
  training.compilation_cache_dir = "~/.cache/lsgm_jax/xla"
  training.compilation_cache_min_compile_s = 2.0  # store only programs this slow to build
  # Skip guard: a step whose loss or grad norm is non-finite or whose grad norm exceeds
  # skip_threshold is not applied; max_consecutive_skips in a row stop the run.
  training.skip_threshold = 0.0  # 0 = only non-finite steps are skipped
  training.max_consecutive_skips = 20
  # Resuming with another batch_size changes what the saved data position means; refused
  # unless this is True (then the position is converted by examples seen, rounded down).
  training.allow_batch_size_change = False

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
  # Options of the fast samplers (issue 13); each is read only by its sampler.
  sampling.ddim_eta = 0.0  # ddim: 0 deterministic DDIM, 1 DDPM posterior
  sampling.heun_rho = 7.0  # heun: Karras schedule exponent (EDM eq. (5))
  sampling.heun_churn = 0.0  # heun: EDM's S_churn (0 = deterministic Algorithm 1)
  sampling.heun_s_tmin = 0.0  # heun: churn only for S_tmin <= sigma <= S_tmax
  sampling.heun_s_tmax = float("inf")
  sampling.heun_s_noise = 1.0
  sampling.dpm_schedule = "logSNR"  # dpm_solver_pp: logSNR | time_uniform | time_quadratic | karras
  sampling.dpm_order = 2  # dpm_solver_pp: 2 (2M) | 3 (3M; better from NFE ~20, BENCHMARKS.md)
  sampling.sscs_order = 1  # sscs: 1 the CLD paper's, 2 Heun on the score part
  # Classifier guidance (issue 13): a method="noise_classifier" workdir trained on the same
  # SDE; the score becomes s + guidance_scale * grad log p_t(y | x) for every sampler.
  sampling.classifier_checkpoint = ""
  sampling.guidance_scale = 1.0
  sampling.class_labels = ()  # tiled over the batch; () cycles through all classes

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 1000
  ev.num_batches = 0  # 0 = one full pass over the held-out split
  # Negative log-likelihood (bits/dim) through the probability-flow ODE (tutorial;
  # Hutchinson trace estimator). Costly: hundreds of network calls per batch.
  ev.likelihood = False
  ev.ode_rtol = 1e-5
  ev.ode_atol = 1e-5
  ev.probe = "rademacher"  # rademacher | gaussian
  # Sample quality (lsgm_jax.evaluation.sample_quality): FID, Inception Score, KID,
  # precision/recall, density/coverage of generated samples vs a split's reference stats.
  ev.fid = False  # --mode=eval computes them on fid_num_samples samples (keys fid50k, ...)
  ev.fid_num_samples = 50_000
  ev.fid_every = 0  # in-training FID every N steps on fid_train_num_samples; 0 = off
  ev.fid_train_num_samples = 2000
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or .npz / .safetensors with
  # torchvision names; never downloaded.
  ev.inception_weights = ""
  # Reference statistics ({mu, sigma} or {pool_3} .npz); "" = the --mode=fid_stats cache
  # <workdir>/fid_stats/<dataset>_<split>_<resolution>.npz.
  ev.fid_stats = ""
  ev.fid_split = "train"  # split of config.data the reference statistics describe
  ev.fid_resize = "torch"  # torch (pytorch-fid, EDM, LSGM) | tf1 (score_sde, CLD-SGM)
  ev.fid_normalize = "torch"  # torch: x/255*2-1 | tf: (x-128)/128
  ev.fid_quantize = "round"  # samples -> uint8: round (EDM) | floor (score_sde) | none (LSGM)
  ev.fid_method = "eigh"  # matrix root: eigh | sqrtm (pytorch-fid) | svd (tfgan)
  ev.fid_batch_size = 200  # Inception batch per process
  ev.fid_num_seeds = 1  # EDM reports the minimum over 3 seed ranges
  ev.fid_extra_metrics = True  # KID, precision/recall, density/coverage (need ref features)
  ev.fid_inception_size = 299  # network input side; anything else only for smoke tests
  # samples | reconstructions (of fid_split, first fid_num_samples images: autoencoder
  # rFID, keys recon_fid50k, ...)
  ev.fid_source = "samples"
  # Reconstruction metrics of --mode=eval for the autoencoder family: LPIPS with this npz
  # (VGG16 or AlexNet layout of models/perceptual.py; evaluation/lpips_weights.py converts
  # the published .pth files); "" = L1 / L2 / MSE / PSNR only.
  ev.lpips_weights_path = ""
  ev.lpips_size = 0  # resize (bilinear) to this side before LPIPS; 0 = native

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 1000  # the "recent" set
  ckpt.keep = 3
  ckpt.permanent_every_steps = 0  # the "permanent" set, never deleted; 0 = none
  ckpt.async_save = True
  # --mode=import: a reference's released file and its format (checkpoint_import.FORMATS:
  # cld_sgm, score_sde, lsgm, latent_vae_jax, score_vae); written as step <file's step>.
  ckpt.import_path = ""
  ckpt.import_format = ""

  config.parallel = par = ml_collections.ConfigDict()
  # Mesh axis sizes; -1 takes all remaining devices. The batch is split over both axes;
  # params larger than fsdp_min_size are sharded over "fsdp" (ZeRO-3 style).
  par.data = -1
  par.fsdp = 1
  par.fsdp_min_size = 2**18

  # Latent VAE (latent_vae_paper.txt): the deep VAE of appendix B (lsgm_jax.models.hvae)
  # on a first stage's latents (or pixels). Read by lsgm_jax.methods.latent_vae.
  config.latent_vae = lv = ml_collections.ConfigDict()
  lv.preset = ""  # a name in presets.hvae.CONFIGS (Table 5); "" = the fields below
  # (h, w, C) of the first stage's latents when config.data names the image dataset they
  # encode (paper configs before --mode=encode); training then needs data.name="latents".
  # () = the deep VAE models config.data as it is.
  lv.latent_shape = ()
  lv.channels = 32  # generator base width c
  lv.enc_channels = 32
  lv.channel_mult = (1, 1)  # per level, highest resolution first
  lv.ffn_ratio = (2, 2)  # 0 = the two-convolution block
  lv.num_groups = (2, 2)  # latent groups per level
  lv.enc_layers = (1, 1)
  lv.num_attention = (0, 0)
  lv.attention_heads = (1, 1)
  lv.z_channels = 4
  lv.class_conditional = True  # hierarchical prior with the dataset's labels + null label
  lv.lowres_conditioning = False  # the upsampler of Table 5
  lv.remat_min_resolution = 0  # rematerialise levels at or above this side; 0 = off
  lv.sigma_q = 0.07  # std of the fixed-variance reconstruction target (Table 5)
  lv.spectral_weight = 0.1  # Table 5 "SR penalty"
  lv.label_dropout = 0.1  # null label 10% of the time (classifier-free guidance)
  # True: multi-head attention outputs x + a projection of q, as the reference's defective
  # AttentionLayer does; only to reproduce its released weights' outputs (issue 12).
  lv.reference_attention = False
  # KL schedule (appendix B; authors' ("shifted_exp", {"scale": 1000, "shift": 10})).
  lv.kl_schedule = "shifted_exp"  # shifted_exp | none
  lv.kl_schedule_scale = 1000.0
  lv.kl_schedule_shift = 10.0
  lv.kl_schedule_total = 66.7  # percent of the total KL the layer shares sum to
  # Guided sampling (paper eq. 2); w_mu = w_sigma = 0 is the plain conditional sampler.
  lv.w_mu = 0.0
  lv.w_sigma = 0.0
  lv.temperature = 1.0
  lv.guide_mean_at_1x1 = True
  # Workdir of the first-stage autoencoder; samples are decoded to pixels through it.
  lv.first_stage = ""
  # --mode=sample task (paper section 5): samples | manifold | interpolate | outpaint.
  lv.task = "samples"
  lv.manifold_size = 9  # grid side of the 2-D sweep
  lv.manifold_range = 2.25  # the sweep covers [-range, range] (paper Figure 4)
  lv.manifold_label = 0  # class of the sweep (class-conditional models)
  lv.interpolate_pairs = 4  # held-out image pairs
  lv.interpolate_steps = 5  # points per path, endpoints included
  lv.outpaint_num = 4  # held-out images to outpaint
  lv.outpaint_factor = 2  # canvas width / image width
  lv.manipulation_temperature = 1.0  # prior temperature of the new latents


  # ScoreVAE (score_vae_paper.txt; method "score_vae"). config.model / config.sde /
  # config.loss describe the unconditional prior (an "sgm" score model); this section the
  # encoder, the objective L_beta (paper section 3.5) and the beta-VAE baseline.
  config.score_vae = sv = ml_collections.ConfigDict()
  sv.stage = "encoder"  # prior (the sgm method) | encoder (frozen prior) | beta_vae
  sv.prior_checkpoint = ""  # stage encoder: workdir of the trained prior
  sv.latent_dim = 384
  sv.beta = 0.01  # KL weight (paper section 4; the 2024 rewrite uses 1e-3)
  # log q(z | x_t) of the conditional score: "exact" is the Gaussian log-density with its
  # -1/2 sum log-variance term (which depends on x_t); "reference" omits that term as the
  # paper code does (losses.py::get_scoreVAE_loss_fn).
  sv.log_q = "exact"
  sv.weighting = "g2"  # g2: 1/2 g(t)^2 (paper, L_beta) | sigma2: 1/2 sigma_t^2 (2024 code)
  sv.t_eps = 1e-3  # t ~ U(t_eps, 1) (the reference's sampling_eps for VP)
  # The reference runs the frozen prior in train mode during encoder training (dropout
  # 0.1 for CIFAR-10); False evaluates it deterministically.
  sv.prior_dropout = False
  sv.encoder = enc = ml_collections.ConfigDict()
  enc.name = "simple"  # simple (time_dependent_simple_encoder) | ddpm (time_dependent_DDPM_encoder)
  enc.nf = 64  # simple: c_hid; ddpm: nf
  enc.ch_mult = (1, 1, 2, 2, 3)  # ddpm only
  enc.num_res_blocks = 2  # ddpm only
  enc.attn_resolutions = (16,)  # ddpm only
  enc.dropout = 0.0  # ddpm only
  # beta_vae: the decoder, mirror (the CIFAR-10 transposed-conv decoder) | ddpm (the
  # up path of the DDPM U-Net, the CelebA baseline); output through a sigmoid.
  sv.decoder = "mirror"
  # Reconstruction / generation: z ~ q(z | x_0) ("sample") or its mean ("mean"); the
  # conditional reverse SDE by config.sampling.method, where "euler_maruyama" with
  # em_grid="reference" is the reference's loop (1000 points linspace(1, eps), step
  # (1 - eps) / N, the last step's mean returned) and "library" is samplers.euler_maruyama.
  sv.posterior = "sample"
  sv.em_grid = "reference"
  # --mode=sample task: generate (z ~ N(0, I)) | reconstruct | interpolate.
  sv.task = "reconstruct"
  sv.num_images = 16  # reconstruct: held-out images shown
  sv.interpolate_pairs = 4
  sv.interpolate_steps = 7
  # --mode=eval: reconstruct held-out images and report L2 (mean per-image Euclidean
  # norm on [0, 1]) and, with lpips_weights_path, LPIPS.
  sv.eval_reconstruct = True
  sv.lpips_weights_path = ""  # npz, layout in lsgm_jax/models/perceptual.py
  sv.lpips_size = 0  # resize (bilinear) to this side before LPIPS; 0 = native
  # LPIPS input: "correct" maps [0, 1] images to [-1, 1]; "reference" feeds [0, 1] images
  # as the paper code did (lpips.LPIPS expects [-1, 1]).
  sv.lpips_input = "correct"

  # LSGM (NVlabs/LSGM train_vae.py / train_vada.py flags; used by method "lsgm").
  config.lsgm = lsgm = ml_collections.ConfigDict()
  lsgm.stage = "train_vae"  # train_vae (NVAE, N(0, I) prior) | train_vada (SGM prior)
  lsgm.vae_checkpoint = ""  # stage 2: workdir of the stage-1 run (--vae_checkpoint)
  lsgm.vae = vae = ml_collections.ConfigDict()  # NVAE architecture (models.nvae.NVAEConfig)
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
  vae.arch_instance = "res_bnswish"  # res_bnswish | res_mbconv
  vae.use_se = True
  vae.num_nf = 0
  vae.decoder_dist = "bin"  # dml | bin | normal
  vae.num_mixture_dec = 10
  vae.num_x_bits = 8
  vae.log_sig_q_scale = 5.0
  vae.progressive_input_vae = "none"  # none | input_skip (the encoder's input pyramid)
  vae.crop_output = False
  # Stage 1 KL warm-up (train_vae.py): coeff from kl_const_coeff to kl_max_coeff over
  # kl_anneal_portion of the steps, after kl_const_portion; KL balancing always on.
  lsgm.kl_anneal_portion = 0.3
  lsgm.kl_const_portion = 0.0001
  lsgm.kl_const_coeff = 0.0001
  lsgm.kl_max_coeff = 1.0
  # Stage 2 (train_vada.py): --cont_kl_anneal continues the warm-up from
  # kl_const_coeff_vada (= stage 1's kl_max_coeff) to kl_max_coeff_vada.
  lsgm.cont_kl_anneal = False
  lsgm.kl_anneal_portion_vada = 0.1
  lsgm.kl_const_portion_vada = 0.0
  lsgm.kl_const_coeff_vada = 0.7
  lsgm.kl_max_coeff_vada = 1.0
  lsgm.kl_balance_vada = False
  # Spectral regularisation + BN weight decay (--weight_decay_norm[_vae|_dae]).
  lsgm.weight_decay_norm_vae = 0.0
  lsgm.weight_decay_norm_dae = 0.0
  lsgm.dae_spectral_reg = True  # False reproduces --custom_conv_dae (no SR on the SGM)
  lsgm.num_power_iter = 4
  # Latent SGM (stage 2). sde: geometric_sde | vpsde | vesde (config.sde holds numbers).
  lsgm.sde_type = "geometric_sde"  # | vpsde | vesde | cld (latent CLD, config.sde.cld_*)
  lsgm.cld_objective = "hsm"  # latent CLD: hsm (v0 marginalised) | dsm (v0 drawn)
  lsgm.sigma2_0 = 0.0
  lsgm.sigma2_min = 1e-4
  lsgm.sigma2_max = 0.99
  lsgm.time_eps = 1e-2
  lsgm.iw_sample_p = "ll_uniform"
  lsgm.iw_sample_q = "reweight_p_samples"
  lsgm.train_vae = True
  lsgm.disjoint_training = False
  lsgm.mixed_prediction = True
  lsgm.mixing_logit_init = -3.0
  lsgm.embedding_dim = 128  # time embedding width of the latent NCSN++ (--embedding_dim)
  lsgm.drop_inactive_var = False
  lsgm.inactive_kl_threshold = 0.1  # nats per latent channel (train_vada.py)
  lsgm.drop_inactive_num_batches = 1000  # batches to average the KL over (max_iter)
  # The SGM prior's optimizer (--learning_rate_dae ...); config.optim is the VAE's.
  lsgm.dae_optim = dae_optim = ml_collections.ConfigDict(optim.to_dict())
  del dae_optim["grad_clip"]  # clipping is global: config.optim.grad_clip
  dae_optim.optimizer = "adamw"
  dae_optim.lr = 3e-4
  dae_optim.eps = 1e-4
  # Sampling / evaluation.
  lsgm.temperature = 1.0  # scales the SGM's initial noise (--temp)
  lsgm.vae_temperature = 1.0  # scales the N(0, I) groups outside the SGM (--vae_temp)
  lsgm.decoder_output = "sample"  # sample | mean of p(x | z) for generated images
  lsgm.ode_eps = 1e-5  # --eval_ode_eps: lower end of the ODE for NLL and sampling

  # The latent VAE's first stage (method "autoencoder"; latent VAE paper §3.1, LDM's
  # AutoencoderKL and LPIPSWithDiscriminator). Architecture: an LDM preset or the fields.
  config.autoencoder = ae = ml_collections.ConfigDict()
  ae.preset = ""  # kl-f4 | kl-f8 | kl-f16 (LDM first stages); "" = the fields below
  ae.ch = 128
  ae.ch_mult = (1, 2, 4, 4)  # len - 1 downsamplings: f = 2^(len - 1)
  ae.num_res_blocks = 2
  ae.attn_resolutions = ()  # feature sizes (of the data's image size) with attention
  ae.z_channels = 4
  ae.embed_dim = 4  # latent channels C
  ae.num_groups = 32  # GroupNorm groups
  ae.dropout = 0.0
  ae.sample_posterior = True  # train the decoder on z ~ q(z|x) (LDM); False: the mean
  # Loss (LDM kl-f* configs: kl_weight 1e-6, disc_weight 0.5, disc_start 50001).
  ae.l1_weight = 1.0
  ae.perceptual_weight = 0.0  # > 0 needs perceptual_weights_path
  ae.perceptual_weights_path = ""  # npz, layout in lsgm_jax/models/perceptual.py
  ae.kl_weight = 1e-6
  ae.adversarial_weight = 0.5  # 0 = no discriminator
  ae.adaptive_disc_weight = True  # LDM's ||grad nll|| / ||grad gan|| at the last layer
  ae.disc_start = 50_001  # step from which the discriminator and its loss are on
  ae.disc_lr = 0.0  # 0 = optim.lr
  ae.disc_ndf = 64
  ae.disc_layers = 3
  # A converted LDM checkpoint (.ckpt / .safetensors) or an autoencoder workdir to start
  # from on a fresh run; also what --mode=encode uses when the workdir has no checkpoint.
  ae.init_checkpoint = ""
  ae.latent_norm = "global"  # shift/scale of the encoded latents: global | channel

  # Latent diffusion (Rombach et al. 2022; method "sgm" on data.name="latents"): the first
  # stage that decodes samples, an autoencoder workdir or an LDM .ckpt (then
  # config.autoencoder describes it); latent_shape (h, w, C) declares the latents when
  # config.data still names the image dataset (configs before --mode=encode).
  config.ldm = ldm = ml_collections.ConfigDict()
  ldm.first_stage = ""
  ldm.latent_shape = ()

  # Progressive distillation (Salimans & Ho 2022, Algorithm 2; method "distill").
  config.distill = dist = ml_collections.ConfigDict()
  dist.teacher_checkpoint = ""  # workdir of a VP "sgm" run (the round-0 teacher)
  dist.teacher_steps = 256  # N of the round-0 teacher's DDIM; round r's student: N / 2^(r+1)
  dist.steps_per_round = 1000  # training steps per halving; rounds = num_train_steps / this
  dist.sample_steps = 0  # --mode=sample: 0 = the restored round's student steps

  config.lock()
  return config


def get_latent_vae_config() -> ml_collections.ConfigDict:
  """Defaults shared by the latent VAE configs (latent VAE paper, appendix B and the
  authors' config/*.py): Adam with beta1 = beta2 = 0.9 and 100 linear warm-up steps,
  constant learning rate, no clipping (large steps are skipped instead), the
  shifted-exponential KL schedule, 10% null labels, rematerialisation from 8x8 up."""
  config = get_default_config()
  config.method = "latent_vae"
  config.optim.optimizer = "adam"
  config.optim.beta1 = 0.9
  config.optim.beta2 = 0.9
  config.optim.warmup_steps = 100
  config.optim.schedule = "constant"  # the reference's cosine has min lr = max lr
  config.optim.grad_clip = 0.0
  lv = config.latent_vae
  lv.kl_schedule = "shifted_exp"
  lv.kl_schedule_scale = 1000.0
  lv.kl_schedule_shift = 10.0
  lv.label_dropout = 0.1
  lv.remat_min_resolution = 8
  config.training.log_every = 500
  config.checkpoint.every_steps = 2500  # reference: recent every 2500, permanent 50k
  config.checkpoint.permanent_every_steps = 50_000
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


def get_lsgm_config(stage: str, steps_per_epoch: int, epochs: int,
                    warmup_epochs: int = 5) -> ml_collections.ConfigDict:
  """Defaults shared by the LSGM configs (NVlabs/LSGM train_vae.py / train_vada.py).

  Epoch counts of the README commands become steps at the commands' global batch.
  Stage 1 (``train_vae``): Adamax, lr 1e-2 cosine to 1e-4, weight decay 3e-4, eps 1e-3,
  no EMA, no clipping. Stage 2 (``train_vada``): the VAE's Adam(W) lr 1e-4 cosine to 1e-5,
  eps 1e-3; the SGM's Adam(W) eps 1e-4; EMA 0.9999; the latent NCSN++ (all channel
  multipliers 1, 8 blocks per level, attention at 16, BigGAN blocks, sqrt(2) skip
  rescale, positional embedding of 1000 t with 128 features, dropout 0.2).
  """
  config = get_default_config()
  config.method = "lsgm"
  config.lsgm.stage = stage
  config.data.centered = True
  config.training.num_train_steps = steps_per_epoch * epochs
  config.training.log_every = 200
  config.optim.grad_clip = 0.0  # --grad_clip_max_norm 0
  config.optim.weight_decay = 3e-4
  config.optim.eps = 1e-3
  config.optim.warmup_steps = steps_per_epoch * warmup_epochs
  config.optim.schedule = "cosine"
  config.checkpoint.every_steps = 5000
  config.eval.batch_size = 256
  config.sampling.batch_size = 100
  config.sampling.num_samples = 100
  if stage == "train_vae":
    config.training.ema_decay = 0.0  # the reference NVAE keeps no EMA
    config.optim.optimizer = "adamax"
    config.optim.lr = 1e-2
    config.optim.min_lr_ratio = 1e-2  # --learning_rate_min_vae 1e-4
    return config
  config.training.ema_decay = 0.9999
  config.optim.optimizer = "adamw"
  config.optim.lr = 1e-4
  config.optim.min_lr_ratio = 0.1  # --learning_rate_min_vae 1e-5
  dae = config.lsgm.dae_optim
  dae.optimizer = "adamw"
  dae.eps = 1e-4
  dae.weight_decay = 3e-4
  dae.warmup_steps = steps_per_epoch * warmup_epochs
  dae.schedule = "constant"  # --learning_rate_min_dae = --learning_rate_dae
  model = config.model
  model.name = "ncsnpp"
  model.ch_mult = (1, 1, 1)
  model.num_res_blocks = 8
  model.attn_resolutions = (16,)
  model.dropout = 0.2
  model.fir = False
  model.skip_rescale = True  # --apply_sqrt2_res
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.time_scale = 1000.0  # --embedding_scale 1000
  config.lsgm.embedding_dim = 128
  config.sampling.method = "probability_flow_ode"
  config.sampling.denoise = False
  config.eval.ode_rtol = 1e-5
  config.eval.ode_atol = 1e-5
  return config


def get_score_vae_config(stage: str) -> ml_collections.ConfigDict:
  """Defaults shared by the ScoreVAE configs (score_vae_paper.txt appendix B; paper code
  conditional_score_diffusion@b188acd3, configs/scoreVAE/paper/pretrained/).

  Prior (stage ``prior``, the sgm method): VP SDE beta 0.1..20, DDPM U-Net seeing 2x - 1
  of [0, 1] data, time input 999 t, DSM with the "simple" weighting lambda = sigma^2
  (``loss.weighting="none"``), Adam, clipping 1, EMA 0.9999. Encoder (stage ``encoder``):
  L_beta with beta 0.01, t ~ U(1e-3, 1), Adam, clipping 1, EMA 0.9999. Reconstruction:
  conditional Euler-Maruyama, 1000 steps to 1e-3, the last mean returned.
  """
  config = get_default_config()
  config.method = "score_vae"
  config.score_vae.stage = stage
  config.data.centered = False  # the paper code's data.centered = False: x in [0, 1]
  config.data.dequantize = False
  config.sde.name = "vpsde"
  config.sde.beta_min = 0.1
  config.sde.beta_max = 20.0
  config.model.name = "unet"
  config.model.center_input = True
  config.loss.weighting = "none"  # lambda(t) = sigma_t^2 (appendix B.1, "simple")
  config.loss.eps = 1e-5
  config.optim.optimizer = "adam"
  config.optim.grad_clip = 1.0
  config.optim.schedule = "constant"  # linear warm-up then constant (LambdaLR)
  config.training.ema_decay = 0.9999
  config.score_vae.beta = 0.01
  config.score_vae.t_eps = 1e-3
  config.sampling.method = "euler_maruyama"
  config.sampling.num_steps = 1000
  config.sampling.eps = 1e-3
  config.sampling.denoise = True
  config.score_vae.em_grid = "reference"
  return config
