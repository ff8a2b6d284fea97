"""Score-based generative models: a score network trained by denoising (or, for CLD,
hybrid) score matching under a VP / sub-VP / VE SDE or critically-damped Langevin
diffusion, sampled by the reverse process, evaluated by the probability-flow ODE
likelihood.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", Sec. 3-3.2): the same method on ``data.name="latents"``, the
normalised posterior means that ``--mode=encode`` of an ``autoencoder`` run wrote
(``configs/ldm_*.py``). With ``ldm.first_stage`` set, samples are decoded to images
through that autoencoder (LDM's x = D(z); here D(z * scale + shift), undoing the
normalisation of the stored latents, LDM's ``scale_factor``).

Parameterisations (the network always predicts a unit-scale quantity):
- scalar SDEs: score(x, t) = -net(x, t) / std(t) (score_sde's "scale by sigma"); with
  ``model.prediction="v"`` (VP only) the network predicts v = alpha eps - std x
  (Salimans & Ho 2022, Sec. 4), x_hat = alpha x - std net and score = -x - alpha net / std;
  DSM with weighting "none" is then alpha^2 ||v - net||^2, with weighting "v" ||v - net||^2;
- CLD: the network sees u = (x, v) and predicts eps_v; the velocity score is
  -l_t net(u, t), plus the Gaussian term -v / Sigma_vv(t) with ``model.mixed_score``
  (CLD-SGM ``get_score_fn``).
"""

from __future__ import annotations

import math
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
from lsgm_jax.methods import first_stage as first_stage_lib

PyTree = Any

SCALAR_WEIGHTINGS = ("none", "simple", "likelihood", "v")
CLD_WEIGHTINGS = ("reweightedv1", "reweightedv2", "likelihood")
SDES = ("vpsde", "subvpsde", "vesde", "cld")
PREDICTIONS = ("eps", "v")


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


def model_shape(config: ml_collections.ConfigDict, data_info) -> tuple[int, ...]:
  """The per-example shape the score model sees: ``config.ldm.latent_shape`` if set
  (latent diffusion configs load before ``--mode=encode`` wrote the latents; checked
  against them once they are the data), else the dataset's shape."""
  declared = tuple(int(s) for s in config.ldm.latent_shape)
  if not declared:
    return tuple(data_info.shape)
  if data_info.name == "latents" and declared != tuple(data_info.shape):
    raise ValueError(f"config.ldm.latent_shape={declared} but the latents in "
                     f"config.data.latents_dir are {tuple(data_info.shape)}")
  return declared


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
    if config.model.prediction not in PREDICTIONS:
      raise ValueError(f"config.model.prediction={config.model.prediction!r} is not one of "
                       f"{PREDICTIONS}")
    if config.model.prediction == "v" and config.sde.name != "vpsde":
      raise ValueError("config.model.prediction='v' needs config.sde.name='vpsde' "
                       "(alpha^2 + sigma^2 = 1)")
    self.center_input = bool(config.model.center_input)
    if self.center_input and (self.is_cld or config.data.centered):
      raise ValueError("config.model.center_input=True (the network sees 2x - 1) needs data "
                       "in [0, 1] (config.data.centered=False) and a scalar SDE")
    self.shape = model_shape(config, data_info)
    channels = self.shape[-1]
    net_in_shape = self.shape[:-1] + (2 * channels,) if self.is_cld else self.shape
    dtype = COMPUTE_DTYPES[config.training.compute_dtype]
    self.net_in_shape = net_in_shape
    self.model = build_model(config.model, net_in_shape, channels, dtype)
    self.sampler = samplers.get_sampler(config.sampling.method)
    self._classifier = None  # loaded on first guided sample (config.sampling.classifier_checkpoint)
    # Loaded on first decode (config.ldm.first_stage).
    self._first_stage = first_stage_lib.LazyFirstStage(config.ldm.first_stage, config)
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

    if self.config.model.prediction == "v":
      def v_score(x, t):  # x_hat = alpha x - std v; score = -(x - alpha x_hat) / std^2
        alpha, std = self.sde.marginal(jnp.ones_like(x), t)
        return -x - (alpha / std) * net(x, t)
      return v_score

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

  def _data(self, batch: dict[str, jax.Array]) -> jax.Array:
    x = batch["x"]
    if tuple(x.shape[1:]) != self.shape:
      raise ValueError(
          f"config.ldm.latent_shape={self.shape}: batches of config.data.name="
          f"{self.config.data.name!r} are {tuple(x.shape[1:])}; train on the first stage's "
          "latents with --config.data.name=latents "
          "--config.data.latents_dir=<autoencoder workdir>/latents")
    return x

  def loss(self, params, model_state, batch, rng, step):
    del step
    loss_rng, dropout_rng = jax.random.split(rng)
    score = self.score_fn(params, model_state, train=True, rng=dropout_rng)
    value = jnp.mean(self._loss_terms(score, self._data(batch), loss_rng))
    return value, ({f"loss/{self.config.loss.objective}": value}, model_state)

  def eval_terms(self, params, model_state, batch, rng):
    loss_rng, ll_rng = jax.random.split(rng)
    score = self.score_fn(params, model_state)
    x = self._data(batch)
    terms = {self.config.loss.objective: self._loss_terms(score, x, loss_rng)}
    if self.config.eval.likelihood:
      terms.update(self.likelihood_terms(score, x, ll_rng))
    return terms

  def likelihood_terms(self, score, x, rng) -> dict[str, jax.Array]:
    """NLL through the probability-flow ODE (tutorial; CLD: the joint (x, v) bound).

    For quantised data the pipeline has already dequantised x (score_sde issue 24), and
    bits/dim subtracts log of the bin width; for continuous data only nats are reported.
    On a first stage's latents (latent diffusion) ``latent_bits_per_dim`` is -log p of
    the normalised latents per LATENT dimension, in bits: a density of continuous
    latents, with no decoder term and no dequantisation, so not an image bits/dim.
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
    if info.name == "latents":
      terms["latent_bits_per_dim"] = -logp / (math.prod(self.shape) * math.log(2.0))
    elif info.num_levels and self.config.data.dequantize:
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

  @property
  def first_stage(self):
    """(module, params, shift, scale) of ``config.ldm.first_stage``, or None."""
    return self._first_stage.stage

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents -> images through the first stage (identity without one):
    z * scale + shift, then the autoencoder's decoder (Rombach et al. 2022, Sec. 3)."""
    return self._first_stage.decode(latents)

  def generate(self, params, model_state, rng, num):
    """Samples of the reverse process; on latents with ``ldm.first_stage``, decoded."""
    latents, info = self.sample_latents(params, model_state, rng, num)
    return self.decode(latents), info

  def sample_latents(self, params, model_state, rng, num):
    """``num`` samples in the model's space (data, or latents for latent diffusion)."""
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
