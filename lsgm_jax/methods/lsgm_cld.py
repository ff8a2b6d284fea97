"""Latent CLD: LSGM whose latent SGM is the critically-damped Langevin diffusion.

``config.lsgm.sde_type = "cld"`` (stage ``train_vada``; stage 1 is the same NVAE): the
top-scale latents z_0 get a velocity v_0 ~ N(0, gamma M I), CLD (``config.sde.cld_*``)
diffuses u = (z, v), the NCSN++ sees u (2C channels) and predicts eps_v (C channels),
and the velocity score is the mixed score of ``objectives/lsgm_cld.py`` (network mixed
with the exact score of N(0, I) latents, per-channel logits as LSGM's). Objectives
(``config.lsgm.cld_objective``: ``hsm`` or ``dsm``):

* q (the VAE's cross entropy): the likelihood-weighted score-matching bound of
  ``lsgm_cld.cross_entropy`` (log-uniform t on [time_eps, 1]);
* p (the SGM): with ``iw_sample_p`` ``ll_iw`` / ``ll_uniform`` the same likelihood
  objective (log-uniform / uniform t), and with ``iw_sample_q = reweight_p_samples``
  the q term reuses those draws and everything is trained by q (LSGM's same-objective
  case); with ``drop_all_uniform`` CLD-SGM's noise-prediction loss ("reweightedv2",
  uniform t) trains the SGM and q draws its own times (``ll_iw`` / ``ll_uniform``), the
  gradients routed as LSGM's different-objective case (``lsgm._routed``).

Evaluation: the NELBO with the prior's NLL from the CLD probability-flow ODE bound
(``likelihood.cld_log_likelihood_bound``; ``nelbo``) and by the score-matching bound
(``nelbo_dsm``). Sampling: any CLD sampler (``config.sampling.method``, e.g. ``sscs``)
on u, then the z part is decoded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lsgm_jax import likelihood
from lsgm_jax.methods import lsgm as lsgm_method
from lsgm_jax.models import nvae_decoder_dist
from lsgm_jax.objectives import lsgm_cld
from lsgm_jax.sde.base import batch_broadcast
from lsgm_jax.sde.cld import CLD

P_MODES = ("ll_iw", "ll_uniform", "drop_all_uniform")
OBJECTIVES = ("hsm", "dsm")


class LatentCLD(lsgm_method.LSGM):
  """LSGM with ``lsgm.sde_type = "cld"``: CLD on (z, v) as the latent prior."""

  # -log p(z_0) bounded by the CLD probability-flow ODE (velocity entropy analytic).
  prior_log_likelihood = staticmethod(likelihood.cld_log_likelihood_bound)

  def __init__(self, config, data_info):
    lc = config.lsgm
    if lc.stage == "train_vada":
      if lc.iw_sample_p not in P_MODES:
        raise ValueError(f"config.lsgm.iw_sample_p={lc.iw_sample_p!r}: latent CLD supports "
                         f"{P_MODES}")
      if lc.cld_objective not in OBJECTIVES:
        raise ValueError(f"config.lsgm.cld_objective={lc.cld_objective!r} is not one of "
                         f"{OBJECTIVES}")
      if lc.disjoint_training:
        raise ValueError("config.lsgm.disjoint_training is not implemented for latent CLD")
      if lc.iw_sample_p == "drop_all_uniform" and lc.iw_sample_q == "reweight_p_samples":
        raise ValueError("config.lsgm.iw_sample_q: with iw_sample_p 'drop_all_uniform' "
                         "latent CLD needs 'll_iw' or 'll_uniform' for q")
    super().__init__(config, data_info)

  def _build_diffusion(self) -> CLD:
    sde = self.config.sde
    return CLD(beta0=float(sde.cld_beta), beta1=float(sde.cld_beta1),
               m_inv=float(sde.cld_m_inv), gamma=float(sde.cld_gamma),
               numerical_eps=float(sde.cld_numerical_eps))

  @property
  def score_input_shape(self) -> tuple[int, int, int]:
    h, w, c = self.latent_shape
    return (h, w, 2 * c)

  # --------------------------------------------------------------------------- score

  def velocity_score_fn(self, score_params, score_state, train: bool, rng, mask=None):
    """``fn(u_t, t)`` -> the prior's mixed velocity score ``[B, h, w, C]``."""
    lc = self.config.lsgm
    rngs = {"dropout": rng} if rng is not None else {}

    def net(u_t, t):
      u_in = u_t if mask is None else u_t * jnp.concatenate([mask, mask]).astype(u_t.dtype)
      return self.score_model.apply({"params": score_params, **score_state}, u_in, t,
                                    train=train, rngs=rngs).astype(jnp.float32)

    logit = score_params.get("mixing_logit") if lc.mixed_prediction else None
    return lsgm_cld.make_mixed_velocity_score_fn(self.diffusion, net, logit,
                                                 lc.cld_objective)

  def score_fn(self, params, model_state):
    return self.velocity_score_fn(params["score"], model_state["score"], False, None,
                                  model_state.get("score_mask"))

  # --------------------------------------------------------------------------- loss

  def _sgm_terms(self, params, model_state, z0, loss_rng, drop_rng):
    lc, cld = self.config.lsgm, self.diffusion
    eps, objective = float(lc.time_eps), lc.cld_objective
    same = lsgm_method.same_objectives(lc.iw_sample_p, lc.iw_sample_q)

    def score(score_params, u_t, t):
      return self.velocity_score_fn(score_params, model_state["score"], True, drop_rng,
                                    model_state.get("score_mask"))(u_t, t)

    rng_p, rng_q = jax.random.split(loss_rng)
    const = lsgm_cld.cross_entropy_const(cld, eps, objective)
    if same:
      # One draw; the likelihood term is both the p objective and the cross entropy.
      t, inv_p, u_t, eps_v, nm = lsgm_cld._draw(rng_p, cld, z0, objective, eps,
                                                lc.iw_sample_p == "ll_iw")
      term = lsgm_cld.likelihood_term(cld, score(params["score"], u_t, t), eps_v, nm, t,
                                      inv_p)
      return _sum(term), term + const
    # Different objectives: SGM <- p (noise prediction or likelihood), VAE <- q, through
    # one network call on the 2B concatenated states (as training_obj_joint.py).
    p_ll = lc.iw_sample_p != "drop_all_uniform"
    t_p, inv_p_p, u_p, eps_p, nm_p = lsgm_cld._draw(
        rng_p, cld, jax.lax.stop_gradient(z0), objective, eps, lc.iw_sample_p == "ll_iw")
    t_q, inv_p_q, u_q, eps_q, nm_q = lsgm_cld._draw(rng_q, cld, z0, objective, eps,
                                                    lc.iw_sample_q == "ll_iw")
    u_t, t = jnp.concatenate([u_p, u_q]), jnp.concatenate([t_p, t_q])
    s_q, s_p = lsgm_method._routed(lambda p, u: score(p, u, t), params["score"], u_t)
    b = z0.shape[0]
    if p_ll:
      p_obj = _sum(lsgm_cld.likelihood_term(cld, s_p[:b], eps_p, nm_p, t_p, inv_p_p))
    else:  # CLD-SGM "reweightedv2": || s / (-l_t) - eps_v ||^2
      p_obj = _sum(jnp.square(s_p[:b] / batch_broadcast(nm_p.reshape(-1), s_p[:b]) - eps_p))
    term = lsgm_cld.likelihood_term(cld, s_q[b:], eps_q, nm_q, t_q, inv_p_q)
    return p_obj, term + const

  # --------------------------------------------------------------------------- eval

  def eval_terms(self, params, model_state, batch, rng):
    """Per-example NELBO: recon + log q + CE of the top latents (score-matching bound,
    ``nelbo_dsm``; CLD ODE bound with ``config.eval.likelihood``, ``nelbo``) + the lower
    scales' N(0, I) cross entropy."""
    x = batch["x"]
    vae_rng, ce_rng, ode_rng = jax.random.split(rng, 3)
    out, _ = self._vae_forward(params, model_state, x, vae_rng, train=False)
    recon = -nvae_decoder_dist.decoder_log_prob(self.vae_cfg, out.logits, x)
    log_q = sum(jnp.sum(lq, axis=(1, 2, 3)) for lq in out.log_q)
    rest = sum((jnp.sum(self._neg_log_normal(e), axis=(1, 2, 3))
                for e in out.eps[self.num_top:]), jnp.zeros_like(recon))
    z0 = self._top_latents(out)
    lc = self.config.lsgm
    ce = lsgm_cld.cross_entropy(ce_rng, self.diffusion, self.score_fn(params, model_state),
                                z0, objective=lc.cld_objective, time_eps=float(lc.time_eps))
    return self._nelbo_terms(params, model_state, z0, ode_rng, recon, log_q,
                             ce.per_example, rest)

  # --------------------------------------------------------------------------- sampling

  def generate(self, params, model_state, rng, num):
    """Top latents from the CLD prior (``config.sampling.method`` on u, e.g. ``sscs``),
    z part decoded by the NVAE."""
    lc, sampling = self.config.lsgm, self.config.sampling
    if sampling.classifier_checkpoint:
      raise ValueError("config.sampling.classifier_checkpoint: classifier guidance is "
                       "implemented for method 'sgm' (a classifier of LSGM latents is not)")
    sgm_rng, vae_rng, out_rng = jax.random.split(rng, 3)
    if float(lc.temperature) != 1.0:
      raise ValueError(f"config.lsgm.temperature={lc.temperature}: latent CLD samples at "
                       "temperature 1 only")
    diffusion = self.diffusion
    options = lsgm_method.samplers.sampler_options(sampling, float(lc.ode_eps))
    sampler = lsgm_method.samplers.get_sampler(sampling.method)
    # CLD samplers take the data (z) shape, run on u = (z, v) and return the z part.
    z0, sinfo = sampler(sgm_rng, diffusion, self.score_fn(params, model_state),
                        (num,) + self.latent_shape, **options)
    info = {k: jnp.asarray(v, jnp.float32) for k, v in sinfo.items() if jnp.ndim(v) == 0}
    variables = {"params": params["vae"], **model_state["vae"]}
    logits = self.vae.apply(variables, num, float(lc.vae_temperature), self._split_groups(z0),
                            method=lsgm_method.nvae_lib.NVAE.sample, rngs={"sample": vae_rng})
    if lc.decoder_output == "mean":
      images = nvae_decoder_dist.decoder_mean(self.vae_cfg, logits)
    else:
      images = nvae_decoder_dist.decoder_sample(self.vae_cfg, logits, out_rng)
    info.setdefault("nfe", jnp.zeros((), jnp.float32))
    return images, info


def _sum(a: jax.Array) -> jax.Array:
  return jnp.sum(jnp.reshape(a, (a.shape[0], -1)), axis=-1)
