"""LSGM: a score-based prior in the latent space of an NVAE, trained end to end.

Two stages, selected by ``config.lsgm.stage`` (NVlabs/LSGM ``train_vae.py`` then
``train_vada.py``):

* ``train_vae``: the NVAE with the N(0, I) prior. Loss: reconstruction + KL-warm-up
  coefficient x balanced KL + lambda (spectral + BN) regularisation; Adamax in the paper
  configs (``config.optim``).
* ``train_vada``: the top-scale latents z_0 (all groups of the coarsest scale,
  concatenated on channels) get an SGM prior: an NCSN++ over the latent grid with the
  mixed score (LSGM "mixed score"; ``params["score"]["mixing_logit"]``). The VAE's KL
  becomes  log q(z|x) + CE(q(z_0|x) || p(z_0)) + (N(0, I) cross entropy of lower
  scales), the cross entropy by denoising score matching (LSGM Theorem 1,
  ``objectives/lsgm.py``). Two objectives, two optimizers (``optax.multi_transform``:
  ``config.optim`` for the VAE, ``config.lsgm.dae_optim`` for the SGM):

    q (VAE) loss  = mean(recon + kl_coeff * balanced KL) + lambda_q R_q + lambda_p R_p
    p (SGM) loss  = mean(p_objective(iw_sample_p)) + lambda_p R_p

  Gradient routing follows the reference's Algorithms 1-3 (``training_obj_joint.py``):
  the VAE is trained by q; the SGM by p when the objectives differ (then the p loss's
  gradient w.r.t. the encoder is discarded and the q loss's w.r.t. the SGM too), and by q
  itself when they are the same likelihood objective (``ll_*`` with
  ``reweight_p_samples``). In the joint variant both objectives share one network call:
  ``_routed`` evaluates the SGM once and returns the prediction twice, with a custom VJP
  that sends the q cotangent only to the latents and the p cotangent only to the SGM's
  parameters (one forward, two backward passes, as the reference's retain_graph). The
  disjoint variant (``disjoint_training``, Algorithm 2) evaluates the SGM twice on
  separate time draws with stop-gradients instead.

The stage-1 VAE is loaded from ``config.lsgm.vae_checkpoint`` (a workdir) when stage 2
starts fresh (``warm_start``); with ``drop_inactive_var`` the mixing logits of latent
channels whose stage-1 KL is below 0.1 nat are set to -15 there, as the reference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from lsgm_jax import checkpoint, likelihood, optim, samplers
from lsgm_jax import data as data_lib
from lsgm_jax.methods.base import COMPUTE_DTYPES, Method
from lsgm_jax.models import nvae as nvae_lib
from lsgm_jax.models import nvae_decoder_dist
from lsgm_jax.models.registry import build_model
from lsgm_jax.objectives import lsgm as lsgm_obj
from lsgm_jax.objectives import nvae_kl, spectral_regularization
from lsgm_jax.sde import lsgm_diffusion
from lsgm_jax.train_state import TrainState

PyTree = Any
STAGES = ("train_vae", "train_vada")
SDE_TYPES = ("geometric_sde", "vpsde", "vesde")
DISABLED_LOGIT = -15.0  # train_vada.py: mixing logit of inactive latent channels
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def nvae_config(vae: ml_collections.ConfigDict, data_info) -> nvae_lib.NVAEConfig:
  """``NVAEConfig`` from ``config.lsgm.vae`` and the dataset's image shape."""
  height, _, channels = data_info.shape
  fields = {f.name for f in dataclasses.fields(nvae_lib.NVAEConfig)}
  kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
            for k, v in vae.to_dict().items() if k in fields}
  return nvae_lib.NVAEConfig(image_size=int(height), data_channels=int(channels), **kwargs)


def build_diffusion(config: ml_collections.ConfigDict) -> lsgm_diffusion.LSGMDiffusion:
  """The latent SDE named by ``config.lsgm.sde_type`` (train_vada.py ``--sde_type``)."""
  lc = config.lsgm
  if lc.sde_type == "geometric_sde":
    return lsgm_diffusion.GeometricVPSDE(sigma2_min=float(lc.sigma2_min),
                                         sigma2_max=float(lc.sigma2_max),
                                         sigma2_0=float(lc.sigma2_0))
  if lc.sde_type == "vpsde":
    return lsgm_diffusion.VPSDEWithInitVar(beta_min=float(config.sde.beta_min),
                                           beta_max=float(config.sde.beta_max),
                                           sigma2_0=float(lc.sigma2_0))
  if lc.sde_type == "vesde":
    return lsgm_diffusion.VESDEWithInitVar(sigma2_min=float(lc.sigma2_min),
                                           sigma2_max=float(lc.sigma2_max),
                                           sigma2_0=float(lc.sigma2_0))
  raise ValueError(f"config.lsgm.sde_type={lc.sde_type!r} is not one of {SDE_TYPES} "
                   "or 'cld' (methods/lsgm_cld.py)")


def same_objectives(iw_sample_p: str, iw_sample_q: str) -> bool:
  """True when q reuses p's likelihood objective (reference ``different_p_q_objectives``)."""
  return iw_sample_p in ("ll_uniform", "ll_iw") and iw_sample_q == lsgm_obj.REWEIGHT_P_SAMPLES


def _routed(fn, params: PyTree, z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(out_q, out_p) = (fn(params, z), fn(params, z)) from ONE evaluation of ``fn``.

  The custom VJP gives out_q's cotangent to ``z`` only and out_p's to ``params`` only:
  the VAE learns from the q objective through the latents, the SGM from the p objective.
  """

  @jax.custom_vjp
  def pair(p, x):
    out = fn(p, x)
    return out, out

  def fwd(p, x):
    out, vjp = jax.vjp(fn, p, x)
    return (out, out), vjp

  def bwd(vjp, cotangents):
    ct_q, ct_p = cotangents
    d_params, _ = vjp(ct_p)
    _, d_z = vjp(ct_q)
    return d_params, d_z

  pair.defvjp(fwd, bwd)
  return pair(params, z)


class _TemperedPrior:
  """An LSGM diffusion whose prior draws are scaled by ``temperature`` (``--temp``)."""

  def __init__(self, base: lsgm_diffusion.LSGMDiffusion, temperature: float):
    self._base, self._temperature = base, float(temperature)

  def __getattr__(self, name):
    return getattr(self._base, name)

  def prior_sample(self, rng, shape):
    return self._temperature * self._base.prior_sample(rng, shape)


class LSGM(Method):
  """NVAE pre-training (``train_vae``) and joint VAE + latent SGM training (``train_vada``)."""

  # -log p(z_0) of the prior by the probability-flow ODE (LatentCLD: the CLD bound).
  prior_log_likelihood = staticmethod(likelihood.log_likelihood)

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    lc = config.lsgm
    if lc.stage not in STAGES:
      raise ValueError(f"config.lsgm.stage={lc.stage!r} is not one of {STAGES}")
    if data_info.is_2d:
      raise ValueError(f"method 'lsgm' needs image data; config.data.name={config.data.name!r} "
                       "is 2-D")
    self.vae_cfg = nvae_config(lc.vae, data_info)
    self.vae = nvae_lib.NVAE(self.vae_cfg)
    self.alpha = nvae_kl.kl_balancer_coeff(self.vae_cfg.num_latent_scales,
                                           self.vae_cfg.groups_per_scale, "square")
    shapes = self.vae_cfg.latent_shapes()
    self.num_top = self.vae_cfg.groups_per_scale[self.vae_cfg.num_latent_scales - 1]
    h, w, c = shapes[0]
    self.latent_shape = (h, w, c * self.num_top)
    self.is_vada = lc.stage == "train_vada"
    if self.is_vada:
      for name in ("iw_sample_p",):
        if lc[name] not in lsgm_diffusion.IW_MODES:
          raise ValueError(f"config.lsgm.{name}={lc[name]!r} is not one of "
                           f"{lsgm_diffusion.IW_MODES}")
      q_modes = (lsgm_obj.REWEIGHT_P_SAMPLES, "ll_uniform", "ll_iw")
      if lc.iw_sample_q not in q_modes:
        raise ValueError(f"config.lsgm.iw_sample_q={lc.iw_sample_q!r} is not one of {q_modes}")
      if lc.disjoint_training and (lc.iw_sample_q == lsgm_obj.REWEIGHT_P_SAMPLES
                                   or not lc.train_vae):
        raise ValueError("config.lsgm.disjoint_training needs config.lsgm.train_vae=True and "
                         "iw_sample_q 'll_uniform' or 'll_iw' (train_vada.py)")
      self.diffusion = self._build_diffusion()
      dtype = COMPUTE_DTYPES[config.training.compute_dtype]
      net = build_model(config.model, self.score_input_shape, self.latent_shape[-1], dtype)
      self.score_model = net.clone(
          embedding_dim=int(lc.embedding_dim) or None,
          mixing_logit_init=float(lc.mixing_logit_init) if lc.mixed_prediction else None,
          mixing_logit_channels=self.latent_shape[-1])

  def _build_diffusion(self):
    return build_diffusion(self.config)

  @property
  def score_input_shape(self) -> tuple[int, int, int]:
    """The score network's input [h, w, channels] (latent CLD doubles the channels)."""
    return self.latent_shape

  # --------------------------------------------------------------------------- params

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    vae_rng, sample_rng, score_rng, sn_rng = jax.random.split(rng, 4)
    x = jnp.zeros((1,) + tuple(self.data_info.shape), jnp.float32)
    variables = self.vae.init({"params": vae_rng, "sample": sample_rng}, x, train=True)
    params = {"vae": variables["params"]}
    model_state = {"vae": nvae_lib.model_state(variables)}
    if self.is_vada:
      z = jnp.zeros((1,) + self.score_input_shape, jnp.float32)
      t = jnp.full((1,), 0.5, jnp.float32)
      score_vars = self.score_model.init({"params": score_rng, "dropout": score_rng}, z, t,
                                         train=False)
      params["score"] = score_vars["params"]
      model_state["score"] = {k: v for k, v in score_vars.items() if k != "params"}
      if self._masks_input:
        # 1 = active latent channel; warm_start writes the drop_inactive_var mask here.
        model_state["score_mask"] = jnp.ones((self.latent_shape[-1],), jnp.float32)
      if self._dae_sr:
        model_state["score_sr"] = spectral_regularization.init_power_vectors(
            params["score"], sn_rng, 10 * int(self.config.lsgm.num_power_iter))
    return params, model_state

  @property
  def _masks_input(self) -> bool:
    lc = self.config.lsgm
    return self.is_vada and bool(lc.drop_inactive_var) and bool(lc.mixed_prediction)

  @property
  def _dae_sr(self) -> bool:
    lc = self.config.lsgm
    return self.is_vada and lc.dae_spectral_reg and float(lc.weight_decay_norm_dae) > 0

  def _schedules(self):
    steps = self.config.training.num_train_steps
    vae = optim.make_schedule(self.config.optim, steps)
    dae = optim.make_schedule(self.config.lsgm.dae_optim, steps) if self.is_vada else None
    return vae, dae

  def make_optimizer(self) -> optax.GradientTransformation:
    """Adamax/Adam for the VAE (``config.optim``), Adam(W) for the SGM (``lsgm.dae_optim``)."""
    steps = self.config.training.num_train_steps
    vae_tx = optim.make_optimizer(self.config.optim, steps)
    if not self.is_vada:
      return optax.multi_transform({"vae": vae_tx}, {"vae": "vae"})
    if not self.config.lsgm.train_vae:
      vae_tx = optax.set_to_zero()
    dae_tx = optim.make_optimizer(self.config.lsgm.dae_optim, steps)
    return optax.multi_transform({"vae": vae_tx, "score": dae_tx},
                                 {"vae": "vae", "score": "score"})

  def check_warm_start(self) -> None:
    lc = self.config.lsgm
    if self.is_vada:
      if not lc.vae_checkpoint:
        raise ValueError("config.lsgm.vae_checkpoint is empty: stage 'train_vada' starts "
                         "from a stage-1 ('train_vae') workdir")
      checkpoint.check_stage(lc.vae_checkpoint,
                             f"config.lsgm.vae_checkpoint={lc.vae_checkpoint!r}")

  def warm_start(self, state: TrainState) -> TrainState:
    """Stage 2 on a fresh start: the stage-1 VAE from ``config.lsgm.vae_checkpoint``
    (params, EMA params, BN statistics), then ``drop_inactive_var``."""
    if not self.is_vada:
      return state
    lc = self.config.lsgm
    self.check_warm_start()
    stage1 = checkpoint.load_stage(lc.vae_checkpoint,
                                   f"config.lsgm.vae_checkpoint={lc.vae_checkpoint!r}")
    vae_params = stage1["params"].get("vae") if isinstance(stage1["params"], dict) else None
    expected = jax.tree.map(lambda a: tuple(a.shape), state.params["vae"])
    got = jax.tree.map(lambda a: tuple(np.shape(a)), vae_params) if vae_params else None
    if got != expected:
      raise checkpoint.CheckpointMismatchError(
          f"config.lsgm.vae_checkpoint={lc.vae_checkpoint!r} does not hold this config's NVAE "
          "(train it with the same config.lsgm.vae and stage 'train_vae')")
    to_jnp = lambda t: jax.tree.map(jnp.asarray, t)
    params = dict(state.params, vae=to_jnp(vae_params))
    ema = dict(state.ema_params, vae=to_jnp(stage1["ema_params"]["vae"]))
    model_state = dict(state.model_state, vae=to_jnp(stage1["model_state"]["vae"]))
    logging.info("stage 2 starts from the stage-1 VAE at step %d of %s", stage1["step"],
                 lc.vae_checkpoint)
    if lc.drop_inactive_var and lc.mixed_prediction:
      active = self.active_channels(params["vae"], model_state["vae"])
      logit = jnp.where(active, params["score"]["mixing_logit"], DISABLED_LOGIT)
      logging.info("drop_inactive_var: %d of %d latent channels active", int(active.sum()),
                   active.size)
      params["score"] = dict(params["score"], mixing_logit=logit)
      ema["score"] = dict(ema["score"], mixing_logit=jnp.array(logit, copy=True))
      # ncsnpp.py ~l.249 (is_active set in train_vada.py): the network's input is masked too.
      model_state["score_mask"] = jnp.asarray(active, jnp.float32)
    return state.replace(params=params, ema_params=ema, model_state=model_state)

  def active_channels(self, vae_params: PyTree, vae_state: PyTree) -> np.ndarray:
    """Top-scale latent channels whose mean KL (vs N(0, I)) exceeds the threshold
    (train_vae.py ``infer_active_variables``, over up to ``drop_inactive_num_batches``)."""
    lc = self.config.lsgm
    batch = int(self.config.training.batch_size)
    it = data_lib.make_train_iterator(self.config.data, global_batch_size=batch, seed=self.config.seed,
                                      process_index=0, process_count=1)

    @jax.jit
    def kl_diag(x, rng):
      out = self.vae.apply({"params": vae_params, **vae_state}, x, train=False,
                           rngs={"sample": rng})
      per_ch = [jnp.mean(jnp.sum(lq - lp, axis=(1, 2)), axis=0)
                for lq, lp in zip(out.log_q[:self.num_top], out.log_p[:self.num_top])]
      return jnp.concatenate(per_ch, axis=-1)

    total, count = 0.0, 0
    for i in range(int(lc.drop_inactive_num_batches)):
      total = total + kl_diag(jnp.asarray(next(it)["x"]), jax.random.PRNGKey(i))
      count += 1
    return np.asarray(total / count) > float(lc.inactive_kl_threshold)

  # --------------------------------------------------------------------------- pieces

  def _vae_forward(self, params, model_state, x, rng, train: bool):
    variables = {"params": params["vae"], **model_state["vae"]}
    if train:
      out, new_vars = self.vae.apply(variables, x, train=True, rngs={"sample": rng},
                                     mutable=list(nvae_lib.MUTABLE_COLLECTIONS))
      return out, new_vars
    return self.vae.apply(variables, x, train=False, rngs={"sample": rng}), None

  def _top_latents(self, out: nvae_lib.NVAEOutput) -> jax.Array:
    return jnp.concatenate(out.eps[:self.num_top], axis=-1)

  def _split_groups(self, per_var: jax.Array) -> list[jax.Array]:
    """[B, h, w, n_top * C] -> per-group [B, h, w, C] (the reference's ``decompose_eps``)."""
    return jnp.split(per_var, self.num_top, axis=-1)

  def net_eps_fn(self, score_params, score_state, train: bool, rng: jax.Array | None,
                 mask: jax.Array | None = None):
    """``fn(z_t, t)`` -> the SGM's final (mixed) noise prediction.

    ``mask`` (``model_state["score_mask"]``, per latent channel) zeroes the inactive
    channels of the NETWORK's input, as the reference's ``mask_inactive_variables``; the
    mixing component still sees the unmasked z_t.
    """
    rngs = {"dropout": rng} if rng is not None else {}
    lc = self.config.lsgm

    def net(z_t, t):
      z_in = z_t if mask is None else z_t * mask.astype(z_t.dtype)
      return self.score_model.apply({"params": score_params, **score_state}, z_in, t,
                                    train=train, rngs=rngs).astype(jnp.float32)

    logit = score_params.get("mixing_logit") if lc.mixed_prediction else None
    return lsgm_obj.make_mixed_noise_pred_fn(self.diffusion, net, logit)

  def score_fn(self, params, model_state):
    """The SGM prior's score over z_t (EMA params at evaluation), for samplers / the ODE."""
    eps_fn = self.net_eps_fn(params["score"], model_state["score"], False, None,
                             model_state.get("score_mask"))

    def score(z_t, t):
      return -eps_fn(z_t, t) / lsgm_diffusion.batch_broadcast(
          jnp.sqrt(self.diffusion.var(t)), z_t)
    return score

  def _kl_coeff(self, step):
    lc, steps = self.config.lsgm, float(self.config.training.num_train_steps)
    if not self.is_vada:
      return nvae_kl.kl_coeff(step, lc.kl_anneal_portion * steps, lc.kl_const_portion * steps,
                              float(lc.kl_const_coeff), float(lc.kl_max_coeff))
    if lc.cont_kl_anneal:
      return nvae_kl.kl_coeff(step, lc.kl_anneal_portion_vada * steps,
                              lc.kl_const_portion_vada * steps,
                              float(lc.kl_const_coeff_vada), float(lc.kl_max_coeff_vada))
    return jnp.ones((), jnp.float32)

  @staticmethod
  def _neg_log_normal(eps: jax.Array) -> jax.Array:
    return 0.5 * jnp.square(eps) + _HALF_LOG_2PI

  def _kl_logs(self, kl_all, kl_diag, coeff, balanced) -> dict[str, jax.Array]:
    metrics = {"kl_coeff": coeff}
    for g in range(kl_all.shape[1]):
      metrics[f"kl_group/{g}"] = balanced.group_kl[g]
      metrics[f"active_units/{g}"] = jnp.sum(kl_diag[g] > 0.1).astype(jnp.float32)
    metrics["active_units/total"] = sum(metrics[f"active_units/{g}"]
                                        for g in range(kl_all.shape[1]))
    return metrics

  # --------------------------------------------------------------------------- loss

  def _sgm_terms(self, params, model_state, z0, loss_rng, drop_rng):
    """(p objective [B], cross entropy per latent variable) of the joint step, with the
    gradient routing of training_obj_joint.py / training_obj_disjoint.py."""
    lc = self.config.lsgm
    opts = dict(iw_sample_p=lc.iw_sample_p, time_eps=float(lc.time_eps))
    same = same_objectives(lc.iw_sample_p, lc.iw_sample_q)
    score_state = model_state["score"]

    def eps_fn(score_params, z_t, t):
      return self.net_eps_fn(score_params, score_state, True, drop_rng,
                             model_state.get("score_mask"))(z_t, t)

    if lc.disjoint_training:
      q_rng, p_rng = jax.random.split(loss_rng)
      frozen = jax.lax.stop_gradient(params["score"])
      ce = lsgm_obj.cross_entropy(
          q_rng, self.diffusion, lambda z, t: eps_fn(frozen, z, t), None, z0,
          iw_sample_q=lc.iw_sample_q, time_eps=float(lc.time_eps))
      ce_per_var = ce.per_variable
      p_obj = lsgm_obj.p_objective(
          p_rng, self.diffusion, lambda z, t: eps_fn(params["score"], z, t), None,
          jax.lax.stop_gradient(z0), **opts)
    else:
      if same:
        def pair(z_t, t):
          e = eps_fn(params["score"], z_t, t)
          return e, e
      else:
        def pair(z_t, t):
          return _routed(lambda p, z: eps_fn(p, z, t), params["score"], z_t)
      terms = lsgm_obj.lsgm_terms_paired(loss_rng, self.diffusion, pair, z0,
                                         iw_sample_q=lc.iw_sample_q, **opts)
      p_obj, _, ce_per_var = terms
    return p_obj, ce_per_var

  def loss(self, params, model_state, batch, rng, step):
    lc = self.config.lsgm
    x = batch["x"]
    vae_rng, loss_rng, drop_rng = jax.random.split(rng, 3)
    out, new_vars = self._vae_forward(params, model_state, x, vae_rng, train=True)
    new_state = dict(model_state, vae=nvae_lib.model_state(new_vars))
    recon = -nvae_decoder_dist.decoder_log_prob(self.vae_cfg, out.logits, x)
    coeff = self._kl_coeff(step)
    reg_q = float(lc.weight_decay_norm_vae) * (
        nvae_lib.spectral_norm_penalty(new_vars["losses"])
        + nvae_lib.batchnorm_penalty(params["vae"]))

    if not self.is_vada:
      # train_vae.py: one-sample KL log q - log N(eps; 0, I) per group, balanced.
      kl_all = jnp.stack([jnp.sum(lq - lp, axis=(1, 2, 3))
                          for lq, lp in zip(out.log_q, out.log_p)], axis=1)
      kl_diag = [jnp.mean(jnp.sum(lq - lp, axis=(1, 2)), axis=0)
                 for lq, lp in zip(out.log_q, out.log_p)]
      balanced = nvae_kl.kl_balancer(kl_all, coeff, True, self.alpha)
      loss = jnp.mean(recon + balanced.kl) + reg_q
      metrics = {"recon": jnp.mean(recon), "kl": jnp.mean(jnp.sum(kl_all, 1)),
                 "nelbo": jnp.mean(recon + jnp.sum(kl_all, 1)), "norm_loss_vae": reg_q,
                 "lr_vae": self._schedules()[0](step)}
      metrics.update(self._kl_logs(kl_all, kl_diag, coeff, balanced))
      return loss, (metrics, new_state)

    # ---- train_vada: SGM prior on the top scale.
    z0 = self._top_latents(out)
    if not lc.train_vae:
      z0 = jax.lax.stop_gradient(z0)
    rest = [self._neg_log_normal(e) for e in out.eps[self.num_top:]]
    reg_p, new_sr = jnp.zeros((), jnp.float32), None
    wdn_dae = float(lc.weight_decay_norm_dae)
    if wdn_dae > 0:
      bn_p = nvae_lib.batchnorm_penalty(params["score"])  # GroupNorm scales, as sr_utils
      if self._dae_sr:
        sn_p, new_sr = spectral_regularization.spectral_penalty(
            params["score"], model_state["score_sr"], int(lc.num_power_iter))
        bn_p = bn_p + sn_p
      reg_p = wdn_dae * bn_p
    if new_sr is not None:
      new_state["score_sr"] = new_sr
    same = same_objectives(lc.iw_sample_p, lc.iw_sample_q)
    p_obj, ce_per_var = self._sgm_terms(params, model_state, z0, loss_rng, drop_rng)
    neg_log_p = self._split_groups(ce_per_var) + rest
    kl_all = jnp.stack([jnp.sum(lq + nlp, axis=(1, 2, 3))
                        for lq, nlp in zip(out.log_q, neg_log_p)], axis=1)
    kl_diag = [jnp.mean(jnp.sum(lq + nlp, axis=(1, 2)), axis=0)
               for lq, nlp in zip(out.log_q, neg_log_p)]
    balanced = nvae_kl.kl_balancer(kl_all, coeff, bool(lc.kl_balance_vada), self.alpha)
    q_loss = jnp.mean(recon + balanced.kl) + reg_q + reg_p
    p_loss = jnp.mean(p_obj) + reg_p
    # The scalar whose gradient is the reference's: VAE <- q; SGM <- q (same objective) or
    # p (routed / disjoint). reg_p is counted once.
    loss = q_loss if same and not lc.disjoint_training else (q_loss - reg_p) + p_loss
    if not lc.train_vae and same and not lc.disjoint_training:
      loss = p_loss  # VAE frozen: the SGM trains on p alone
    kl = jnp.sum(kl_all, axis=1)
    lr_vae, lr_dae = self._schedules()
    metrics = {"q_loss": q_loss - reg_p - reg_q, "p_loss": p_loss - reg_p, "recon": jnp.mean(recon),
               "kl": jnp.mean(kl), "nelbo": jnp.mean(recon + kl), "norm_loss_vae": reg_q,
               "norm_loss_dae": reg_p, "lr_vae": lr_vae(step), "lr_dae": lr_dae(step)}
    if lc.mixed_prediction:
      mix = jax.nn.sigmoid(params["score"]["mixing_logit"])
      metrics.update({"mixing_prob/mean": jnp.mean(mix), "mixing_prob/min": jnp.min(mix),
                      "mixing_prob/max": jnp.max(mix)})
    metrics.update(self._kl_logs(kl_all, kl_diag, coeff, balanced))
    return loss, (metrics, new_state)

  # --------------------------------------------------------------------------- eval

  def _per_dim(self, nats: jax.Array) -> dict[str, jax.Array]:
    dims = float(np.prod(self.data_info.shape))
    if self.vae_cfg.crop_output:  # MNIST: likelihood over the central 28x28
      h = self.data_info.shape[0] - 4
      dims = float(h * h * self.data_info.shape[-1])
    return {"bits_per_dim": nats / (dims * math.log(2.0))}

  def latent_nll(self, params, model_state, z0: jax.Array, rng: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """-log p(z_0) of the SGM prior by the probability-flow ODE from ``lsgm.ode_eps``
    (evaluate_vada.py ``--nll_ode_eval``), and the number of network calls."""
    ev = self.config.eval
    logp, nfe = self.prior_log_likelihood(
        rng, self.diffusion, self.score_fn(params, model_state), z0,
        rtol=float(ev.ode_rtol), atol=float(ev.ode_atol), probe=ev.probe,
        eps=float(self.config.lsgm.ode_eps))
    return -logp, nfe

  def eval_terms(self, params, model_state, batch, rng):
    """Per-example NELBO (nats and bits/dim). Stage 1: recon + analytic KL. Stage 2:
    recon + log q(z|x) + CE, the CE by DSM (``nelbo_dsm``) and, with
    ``config.eval.likelihood``, by the probability-flow ODE (``nelbo``, ``nfe``)."""
    x = batch["x"]
    vae_rng, ce_rng, ode_rng = jax.random.split(rng, 3)
    out, _ = self._vae_forward(params, model_state, x, vae_rng, train=False)
    recon = -nvae_decoder_dist.decoder_log_prob(self.vae_cfg, out.logits, x)
    if not self.is_vada:
      nelbo = recon + jnp.sum(out.kl_per_group, axis=1)
      return {"nelbo": nelbo, "recon": recon, **self._per_dim(nelbo)}
    log_q = sum(jnp.sum(lq, axis=(1, 2, 3)) for lq in out.log_q)
    rest = sum((jnp.sum(self._neg_log_normal(e), axis=(1, 2, 3))
                for e in out.eps[self.num_top:]), jnp.zeros_like(recon))
    z0 = self._top_latents(out)
    lc = self.config.lsgm
    eps_fn = self.net_eps_fn(params["score"], model_state["score"], False, None,
                             model_state.get("score_mask"))
    ce = lsgm_obj.cross_entropy(ce_rng, self.diffusion, eps_fn, None, z0,
                                iw_sample_q="ll_uniform", time_eps=float(lc.time_eps))
    return self._nelbo_terms(params, model_state, z0, ode_rng, recon, log_q,
                             ce.per_example, rest)

  def _nelbo_terms(self, params, model_state, z0, ode_rng, recon, log_q, cross_entropy,
                   rest):
    """NELBO = recon + log q + CE(q || p) + rest, with the cross entropy from the
    training estimator (``nelbo_dsm``) and, with ``eval.likelihood``, from the latent
    probability-flow ODE (``nelbo``)."""
    nelbo_dsm = recon + log_q + cross_entropy + rest
    terms = {"nelbo_dsm": nelbo_dsm, "recon": recon}
    if self.config.eval.likelihood:
      nll_z, nfe = self.latent_nll(params, model_state, z0, ode_rng)
      nelbo = recon + log_q + nll_z + rest
      terms.update({"nelbo": nelbo, "nfe": jnp.broadcast_to(nfe, nelbo.shape).astype(jnp.float32),
                    **self._per_dim(nelbo)})
    else:
      terms.update({k + "_dsm": v for k, v in self._per_dim(nelbo_dsm).items()})
    return terms

  # --------------------------------------------------------------------------- sampling

  def generate(self, params, model_state, rng, num):
    """Images from the model: stage 1 from N(0, I); stage 2 the top latents from the SGM
    (``config.sampling.method``: the probability-flow ODE or an SDE sampler) at
    ``lsgm.temperature``, decoded by the NVAE (lower scales at ``lsgm.vae_temperature``)."""
    lc, sampling = self.config.lsgm, self.config.sampling
    sgm_rng, vae_rng, out_rng = jax.random.split(rng, 3)
    variables = {"params": params["vae"], **model_state["vae"]}
    info = {}
    eps_z = None
    if sampling.classifier_checkpoint:
      raise ValueError("config.sampling.classifier_checkpoint: classifier guidance is "
                       "implemented for method 'sgm' (a classifier of LSGM latents is not)")
    if self.is_vada:
      diffusion = _TemperedPrior(self.diffusion, float(lc.temperature))
      options = samplers.sampler_options(sampling, float(lc.ode_eps))
      sampler = samplers.get_sampler(sampling.method)
      z0, sinfo = sampler(sgm_rng, diffusion, self.score_fn(params, model_state),
                          (num,) + self.latent_shape, **options)
      info = {k: jnp.asarray(v, jnp.float32) for k, v in sinfo.items() if jnp.ndim(v) == 0}
      eps_z = self._split_groups(z0)
    logits = self.vae.apply(variables, num, float(lc.vae_temperature), eps_z,
                            method=nvae_lib.NVAE.sample, rngs={"sample": vae_rng})
    if lc.decoder_output == "mean":
      images = nvae_decoder_dist.decoder_mean(self.vae_cfg, logits)
    else:
      images = nvae_decoder_dist.decoder_sample(self.vae_cfg, logits, out_rng)
    info.setdefault("nfe", jnp.zeros((), jnp.float32))
    return images, info
