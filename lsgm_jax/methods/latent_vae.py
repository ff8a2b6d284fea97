"""Latent VAE (latent_vae_paper.txt): a deep hierarchical VAE (``models.hvae``, appendix
B) trained on a first stage's latents (or on pixels), class-conditional with
classifier-free guidance (eq. 2, appendix C).

Training objective per example (appendix B; authors' ``training_losses_fn``):

    recon KL( N(x, sigma_q^2) || N(mean, var) )
    + sum_l w_l KL_l           (KL schedule, ``objectives.vae``; w_l without gradient)
    + spectral_weight * SR     (spectral-norm penalty of the prior / posterior heads)

with the label replaced by the null label ``label_dropout`` of the time. The optimizer
(Adam beta1 = beta2 = 0.9, 100 warm-up steps), the gradient-skip threshold and the EMA
are the platform's, set from the config (``configs/latent_vae_*.py``).

Stages: the first stage (an autoencoder) is trained and its latents written by
another method; this one reads them as the dataset ``latents`` and, when
``config.latent_vae.first_stage`` names its workdir, decodes samples to pixels.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lsgm_jax import likelihood
from lsgm_jax.methods.base import Method
from lsgm_jax.methods import first_stage as first_stage_lib
from lsgm_jax.models import hvae, hvae_losses
from lsgm_jax.objectives import vae as vae_objectives
from lsgm_jax.presets import hvae as hvae_presets

PyTree = Any

TASKS = ("samples", "manifold", "interpolate", "outpaint")


def model_shape(lv: ml_collections.ConfigDict, data_info) -> tuple[int, int, int]:
  """(H, W, C) the deep VAE models: ``latent_vae.latent_shape`` if set (checked against
  stored latents), else the dataset's per-example shape."""
  shape = tuple(int(s) for s in lv.latent_shape) or tuple(data_info.shape)
  if len(shape) != 3 or shape[0] != shape[1]:
    raise ValueError(f"config.data.name={data_info.name!r}: the latent VAE models square "
                     f"images (H, W, C), got {shape}")
  if lv.latent_shape and data_info.name == "latents" and shape != tuple(data_info.shape):
    raise ValueError(f"config.latent_vae.latent_shape={shape} but the latents in "
                     f"config.data.latents_dir are {tuple(data_info.shape)}")
  return shape


def build_hvae_config(lv: ml_collections.ConfigDict, data_info) -> hvae.HVAEConfig:
  """The ``HVAEConfig`` of ``config.latent_vae`` for data of ``model_shape``.

  A ``preset`` (a Table 5 configuration in ``hvae_presets.CONFIGS``) gives the architecture;
  otherwise the per-level fields do. The config's sigma_q, spectral weight, label
  dropout, conditioning and remat switches override the preset's.
  """
  side, _, channels = model_shape(lv, data_info)
  if lv.preset:
    if lv.preset not in hvae_presets.CONFIGS:
      raise ValueError(f"config.latent_vae.preset={lv.preset!r} is not one of "
                       f"{sorted(hvae_presets.CONFIGS)}")
    cfg = hvae_presets.CONFIGS[lv.preset]()
    if (cfg.resolution, cfg.data_channels) != (side, channels):
      raise ValueError(
          f"config.latent_vae.preset={lv.preset!r} models {cfg.resolution}x"
          f"{cfg.resolution}x{cfg.data_channels} data, but config.data / "
          f"config.latent_vae.latent_shape give {(side, side, channels)}")
  else:
    cfg = hvae.HVAEConfig(
        resolution=side, channels=int(lv.channels), enc_channels=int(lv.enc_channels),
        channel_mult=tuple(lv.channel_mult), ffn_ratio=tuple(lv.ffn_ratio),
        num_groups=tuple(lv.num_groups), enc_layers=tuple(lv.enc_layers),
        num_attention=tuple(lv.num_attention),
        attention_heads=tuple(lv.attention_heads), data_channels=channels,
        z_channels=int(lv.z_channels), lowres_conditioning=bool(lv.lowres_conditioning))
  num_classes = 0
  if lv.class_conditional:
    num_classes = int(data_info.num_classes)
    if num_classes <= 0:
      raise ValueError(f"config.latent_vae.class_conditional=True but dataset "
                       f"{data_info.name!r} has no labels")
  if not 0.0 <= float(lv.label_dropout) < 1.0:
    raise ValueError(f"config.latent_vae.label_dropout={lv.label_dropout} must be in [0, 1)")
  if float(lv.sigma_q) <= 0:
    raise ValueError(f"config.latent_vae.sigma_q={lv.sigma_q} must be > 0")
  remat = (hvae.remat_from(cfg.resolutions, int(lv.remat_min_resolution))
           if int(lv.remat_min_resolution) > 0 else ())
  return dataclasses.replace(
      cfg, num_classes=num_classes,
      hierarchical_prior=cfg.hierarchical_prior or num_classes > 0,
      label_drop_prob=float(lv.label_dropout), remat=remat, sigma_q=float(lv.sigma_q),
      spectral_weight=float(lv.spectral_weight),
      reference_attention=bool(lv.reference_attention))


def config_data_name(method: Method) -> str:
  return repr(method.config.data.name)


def gaussian_nll(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """Per-example -log N(x | mean, exp(logvar)) summed over pixels (nats)."""
  nll = 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * jnp.exp(-logvar))
  return jnp.sum(nll, axis=tuple(range(1, x.ndim)))


class LatentVAE(Method):
  """The deep VAE of the latent VAE paper as a platform method."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    lv = config.latent_vae
    if lv.kl_schedule not in vae_objectives.KL_SCHEDULES:
      raise ValueError(f"config.latent_vae.kl_schedule={lv.kl_schedule!r} is not one of "
                       f"{vae_objectives.KL_SCHEDULES}")
    if lv.task not in TASKS:
      raise ValueError(f"config.latent_vae.task={lv.task!r} is not one of {TASKS}")
    self.hvae_config = build_hvae_config(lv, data_info)
    self.shape = model_shape(lv, data_info)
    self.model = hvae.HVAE(self.hvae_config)
    self.shares = None
    if lv.kl_schedule == "shifted_exp":
      self.shares = jnp.asarray(vae_objectives.shifted_exp_rates(
          self.hvae_config.total_groups, float(lv.kl_schedule_scale),
          float(lv.kl_schedule_shift), float(lv.kl_schedule_total)))
    # Layer index -> level resolution, for the per-level KL metrics (top first).
    res = self.hvae_config.resolutions
    self.layer_resolution = np.concatenate(
        [np.full(self.hvae_config.num_groups[i], res[i]) for i in reversed(range(len(res)))])
    # Loaded on first decode (config.latent_vae.first_stage).
    self._first_stage = first_stage_lib.LazyFirstStage(config.latent_vae.first_stage, config)

  # --- model ---------------------------------------------------------------------

  @property
  def conditional(self) -> bool:
    return self.hvae_config.num_classes > 0

  def _labels(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch["label"].astype(jnp.int32) if self.conditional else None

  def _data(self, batch: dict[str, jax.Array]) -> jax.Array:
    x = batch["x"]
    if tuple(x.shape[1:]) != self.shape:
      raise ValueError(
          f"config.latent_vae.latent_shape={self.shape}: batches of {config_data_name(self)}"
          f" are {tuple(x.shape[1:])}; train on the first stage's latents with "
          "--config.data.name=latents --config.data.latents_dir=<autoencoder workdir>/latents")
    return x

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    x = jnp.zeros((1,) + self.shape, jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if self.conditional else None
    params_rng, sample_rng = jax.random.split(rng)
    variables = self.model.init({"params": params_rng, hvae.SAMPLE_RNG: sample_rng},
                                x, label)
    params = variables["params"]
    return params, {k: v for k, v in variables.items() if k != "params"}

  def kl_weights(self, kl: jax.Array) -> jax.Array | None:
    """Per-example, per-layer weights of the KL schedule (None: no schedule)."""
    if self.shares is None:
      return None
    return vae_objectives.scheduled_kl_weights(kl, self.shares)

  def posterior_pass(self, params, model_state, x, label, rng, *, train: bool):
    """``HVAE.__call__`` (label dropout only in training); returns (output, new state)."""
    variables = {"params": params, **model_state}
    if train:
      out, new_state = self.model.apply(
          variables, x, label, drop_labels=True, rngs={hvae.SAMPLE_RNG: rng},
          mutable=[hvae.SPECTRAL_COLLECTION])
      return out, {**model_state, **new_state}
    out = self.model.apply(variables, x, label, drop_labels=False,
                           rngs={hvae.SAMPLE_RNG: rng})
    return out, model_state

  def loss(self, params, model_state, batch, rng, step):
    del step  # the KL schedule is per layer, not per step (appendix B)
    x = self._data(batch)
    out, new_state = self.posterior_pass(params, model_state, x, self._labels(batch), rng,
                                         train=True)
    cfg = self.hvae_config
    out = jax.tree.map(lambda a: a.astype(jnp.float32), out)
    terms = hvae_losses.loss_terms(out, x, cfg.sigma_q, cfg.spectral_weight,
                            kl_weights=self.kl_weights(out.kl))
    loss = jnp.mean(terms["loss"])
    metrics = {
        "loss/recon": jnp.mean(terms["recon"]),
        "loss/kl_scheduled": jnp.mean(terms["loss"] - terms["recon"]) - (
            cfg.spectral_weight * out.spectral),
        "loss/spectral": cfg.spectral_weight * out.spectral,
        "kl": jnp.mean(terms["kl"]),
    }
    mean_kl = jnp.mean(out.kl, axis=0)
    for r in sorted(set(self.layer_resolution.tolist()), reverse=True):
      metrics[f"kl/res{r}"] = jnp.sum(jnp.where(self.layer_resolution == r, mean_kl, 0.0))
    return loss, (metrics, new_state)

  def eval_terms(self, params, model_state, batch, rng):
    """Per example: NELBO (eq. 1, Gaussian decoder) in nats, KL, the training recon
    term; bits/dim for dequantised pixel data."""
    x = self._data(batch)
    out, _ = self.posterior_pass(params, model_state, x, self._labels(batch), rng,
                                 train=False)
    out = jax.tree.map(lambda a: a.astype(jnp.float32), out)
    kl = jnp.sum(out.kl, axis=-1)
    nelbo = gaussian_nll(x, out.mean, out.logvar) + kl
    terms = {"nelbo_nats": nelbo, "kl": kl,
             "recon": hvae_losses.reconstruction_kl(x, out.mean, out.logvar,
                                             self.hvae_config.sigma_q)}
    info = self.data_info
    if info.num_levels and self.config.data.dequantize and info.name != "latents":
      low, high = info.data_range
      terms["bits_per_dim"] = likelihood.bits_per_dim(
          -nelbo, info.dims, bin_width=(high - low) / info.num_levels)
    return terms

  # --- sampling ------------------------------------------------------------------

  def sample_labels(self, num: int) -> jax.Array | None:
    """Labels cycling over the classes (0, 1, ..., K-1, 0, ...)."""
    if not self.conditional:
      return None
    return jnp.arange(num, dtype=jnp.int32) % self.hvae_config.num_classes

  def sample_latents(self, variables, rng, num: int, label: jax.Array | None = None, *,
                     w_mu: float | None = None, w_sigma: float | None = None,
                     temperature: float | None = None) -> jax.Array:
    """One ancestral pass of the (guided) prior: ``[num, H, W, C]`` in data space of
    the deep VAE (latents when a first stage is used). ``variables``: params and the
    spectral vectors. Labels cycle over the classes and guidance weights and
    temperature come from the config unless given."""
    lv = self.config.latent_vae
    w_mu = float(lv.w_mu) if w_mu is None else w_mu
    w_sigma = float(lv.w_sigma) if w_sigma is None else w_sigma
    temperature = float(lv.temperature) if temperature is None else temperature
    if self.hvae_config.lowres_conditioning:
      raise ValueError("the upsampler (latent_vae.lowres_conditioning) samples from "
                       "low-resolution images; sample the base model first")
    label = self.sample_labels(num) if label is None else label
    guided = self.conditional and (
        isinstance(w_mu, jax.Array) or isinstance(w_sigma, jax.Array)
        or w_mu != 0.0 or w_sigma != 0.0)
    return self.model.apply(
        variables, rng, num, label, guided=guided, w_mu=w_mu, w_sigma=w_sigma,
        temperature=temperature, guide_mean_at_1x1=bool(lv.guide_mean_at_1x1),
        method=hvae.HVAE.sample)

  @property
  def first_stage(self):
    """(module, params, shift, scale) of ``config.latent_vae.first_stage``, or None."""
    return self._first_stage.stage

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents -> images through the first stage (identity without one):
    z * scale + shift, then the autoencoder's decoder (Rombach et al. 2022, Sec. 3)."""
    return self._first_stage.decode(latents)

  def generate(self, params, model_state, rng, num):
    samples = self.decode(self.sample_latents({"params": params, **model_state}, rng, num))
    return samples, {"nfe": jnp.ones((), jnp.float32)}

  def sample_task(self, state, out_dir: str) -> dict[str, float] | None:
    """``--mode=sample`` with ``config.latent_vae.task`` other than "samples": runs the
    manipulation of paper section 5 and writes its PNG into ``out_dir``; None for the
    plain samples task (the trainer writes those)."""
    if self.config.latent_vae.task == "samples":
      return None
    from lsgm_jax.evaluation import manipulations
    os.makedirs(out_dir, exist_ok=True)
    return manipulations.run_task(self, {"params": state.ema_params, **state.model_state},
                                  out_dir)
