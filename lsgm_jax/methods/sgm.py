"""Pixel-space score-based generative models: a score network trained by denoising (or,
for CLD, hybrid) score matching under a VP / sub-VP / VE SDE or critically-damped
Langevin diffusion, sampled by the reverse process, evaluated by the probability-flow
ODE likelihood.

Parameterisations (the network always predicts a unit-scale noise):
- scalar SDEs: score(x, t) = -net(x, t) / std(t) (score_sde's "scale by sigma");
- CLD: the network sees u = (x, v) and predicts eps_v; the velocity score is
  -l_t net(u, t), plus the Gaussian term -v / Sigma_vv(t) with ``model.mixed_score``
  (CLD-SGM ``get_score_fn``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lsgm_jax import guidance, likelihood, samplers, sde as sde_lib
from lsgm_jax.methods.base import COMPUTE_DTYPES, Method
from lsgm_jax.models.registry import build_model
from lsgm_jax.objectives.dsm import dsm_loss
from lsgm_jax.objectives.hsm import cld_loss
from lsgm_jax.sde.cld import CLD, cld_mixed_score

PyTree = Any

SCALAR_WEIGHTINGS = ("none", "simple", "likelihood")
CLD_WEIGHTINGS = ("reweightedv1", "reweightedv2", "likelihood")
SDES = ("vpsde", "subvpsde", "vesde", "cld")


def build_sde(sde_config: ml_collections.ConfigDict) -> sde_lib.SDE:
  """The forward process named by ``config.sde.name``."""
  name = sde_config.name
  if name == "vpsde":
    return sde_lib.VPSDE(beta_min=float(sde_config.beta_min), beta_max=float(sde_config.beta_max))
  if name == "subvpsde":
    return sde_lib.SubVPSDE(beta_min=float(sde_config.beta_min),
                            beta_max=float(sde_config.beta_max))
  if name == "vesde":
    return sde_lib.VESDE(sigma_min=float(sde_config.sigma_min),
                         sigma_max=float(sde_config.sigma_max))
  if name == "cld":
    return CLD(beta0=float(sde_config.cld_beta), beta1=float(sde_config.cld_beta1),
               m_inv=float(sde_config.cld_m_inv), gamma=float(sde_config.cld_gamma),
               numerical_eps=float(sde_config.cld_numerical_eps))
  raise ValueError(f"config.sde.name={name!r} is not one of {SDES} for method 'sgm'")


class SGM(Method):
  """Score matching (tutorial DSM; CLD paper HSM) + reverse-process sampling."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    self.sde = build_sde(config.sde)
    self.is_cld = isinstance(self.sde, CLD)
    loss = config.loss
    allowed = CLD_WEIGHTINGS if self.is_cld else SCALAR_WEIGHTINGS
    if loss.weighting not in allowed:
      raise ValueError(f"config.loss.weighting={loss.weighting!r} is not one of {allowed} "
                       f"for config.sde.name={config.sde.name!r}")
    objectives = ("hsm", "dsm") if self.is_cld else ("dsm",)
    if loss.objective not in objectives:
      raise ValueError(f"config.loss.objective={loss.objective!r} is not one of "
                       f"{objectives} for config.sde.name={config.sde.name!r}")
    if config.model.mixed_score and not self.is_cld:
      raise ValueError("config.model.mixed_score=True needs config.sde.name='cld'")
    self.center_input = bool(config.model.center_input)
    if self.center_input and (self.is_cld or config.data.centered):
      raise ValueError("config.model.center_input=True (the network sees 2x - 1) needs data "
                       "in [0, 1] (config.data.centered=False) and a scalar SDE")
    self.shape = tuple(data_info.shape)
    channels = self.shape[-1]
    net_in_shape = self.shape[:-1] + (2 * channels,) if self.is_cld else self.shape
    dtype = COMPUTE_DTYPES[config.training.compute_dtype]
    self.net_in_shape = net_in_shape
    self.model = build_model(config.model, net_in_shape, channels, dtype)
    self.sampler = samplers.get_sampler(config.sampling.method)
    self._classifier = None  # loaded on first guided sample (config.sampling.classifier_checkpoint)
    # HSM marginalises v0 ~ N(0, gamma M); DSM conditions on it (CLD paper, Sec. 3).
    self.var0v = (self.sde.hsm_var0v if loss.objective == "hsm" else 0.0) if self.is_cld \
        else None

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    x = jnp.zeros((1,) + self.net_in_shape, jnp.float32)
    t = jnp.full((1,), 0.5, jnp.float32)
    variables = self.model.init({"params": rng, "dropout": rng}, x, t, train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return params, model_state

  def score_fn(self, params: PyTree, model_state: PyTree, train: bool = False,
               rng: jax.Array | None = None):
    """``score_fn(x, t)`` of the network (CLD: the velocity score of u = (x, v))."""
    rngs = {"dropout": rng} if rng is not None else {}

    def net(x, t):
      if self.center_input:  # score_sde DDPM, data.centered=False: the net sees 2x - 1
        x = 2.0 * x - 1.0
      out = self.model.apply({"params": params, **model_state}, x, t, train=train, rngs=rngs)
      return out.astype(jnp.float32)

    if self.is_cld:
      def score(u, t):
        out = net(u, t)
        if self.config.model.mixed_score:
          return cld_mixed_score(self.sde, u, t, out, self.var0v)
        nm = self.sde.noise_multiplier(t, 0.0, self.var0v)
        return sde_lib.batch_broadcast(nm, out) * out
      return score

    def score(x, t):
      _, std = self.sde.marginal(jnp.zeros_like(x), t)
      return -net(x, t) / std
    return score

  def _loss_terms(self, score, x, rng):
    loss = self.config.loss
    if self.is_cld:
      return cld_loss(rng, self.sde, score, x, objective=loss.objective,
                      weighting=loss.weighting, loss_eps=float(loss.eps))
    return dsm_loss(rng, self.sde, score, x, weighting=loss.weighting,
                    loss_eps=float(loss.eps))

  def loss(self, params, model_state, batch, rng, step):
    del step
    loss_rng, dropout_rng = jax.random.split(rng)
    score = self.score_fn(params, model_state, train=True, rng=dropout_rng)
    value = jnp.mean(self._loss_terms(score, batch["x"], loss_rng))
    return value, ({f"loss/{self.config.loss.objective}": value}, model_state)

  def eval_terms(self, params, model_state, batch, rng):
    loss_rng, ll_rng = jax.random.split(rng)
    score = self.score_fn(params, model_state)
    terms = {self.config.loss.objective: self._loss_terms(score, batch["x"], loss_rng)}
    if self.config.eval.likelihood:
      terms.update(self.likelihood_terms(score, batch["x"], ll_rng))
    return terms

  def likelihood_terms(self, score, x, rng) -> dict[str, jax.Array]:
    """NLL through the probability-flow ODE (tutorial; CLD: the joint (x, v) bound).

    For quantised data the pipeline has already dequantised x (score_sde issue 24), and
    bits/dim subtracts log of the bin width; for continuous data only nats are reported.
    """
    ev = self.config.eval
    options = dict(rtol=float(ev.ode_rtol), atol=float(ev.ode_atol), probe=ev.probe,
                   eps=float(self.config.loss.eps))
    if self.is_cld:
      logp, nfe = likelihood.cld_log_likelihood_bound(rng, self.sde, score, x, **options)
    else:
      logp, nfe = likelihood.log_likelihood(rng, self.sde, score, x, **options)
    terms = {"nll_nats": -logp, "nfe": jnp.broadcast_to(nfe, logp.shape).astype(jnp.float32)}
    info = self.data_info
    if info.num_levels and self.config.data.dequantize:
      low, high = info.data_range
      terms["bits_per_dim"] = likelihood.bits_per_dim(
          logp, info.dims, bin_width=(high - low) / info.num_levels)
    return terms

  @property
  def classifier(self):
    """The noise classifier of ``config.sampling.classifier_checkpoint`` (or None)."""
    path = self.config.sampling.classifier_checkpoint
    if not path:
      return None
    if self._classifier is None:
      self._classifier = guidance.load_classifier(path, self.sde)
    return self._classifier

  def generate(self, params, model_state, rng, num):
    sampling = self.config.sampling
    score = self.score_fn(params, model_state)
    classifier = self.classifier
    if classifier is not None:  # classifier guidance (issue 13): s + w grad log p_t(y | x)
      labels = guidance.sample_labels(tuple(sampling.class_labels), num,
                                      classifier.num_classes)
      score = guidance.guided_score_fn(self.sde, score, classifier.log_prob_fn(), labels,
                                       float(sampling.guidance_scale))
    options = samplers.sampler_options(sampling, float(sampling.eps))
    samples, info = self.sampler(rng, self.sde, score, (num,) + self.shape, **options)
    return samples, {k: jnp.asarray(v, jnp.float32) for k, v in info.items()
                     if jnp.ndim(v) == 0}
