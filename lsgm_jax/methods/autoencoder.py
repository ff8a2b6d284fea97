"""The latent VAE's first stage: a KL autoencoder trained with L1 + perceptual + patch
adversarial losses (latent VAE paper, §3.1; the objective of LDM's
``LPIPSWithDiscriminator``, see ``objectives/autoencoder_losses.py``).

Params are ``{"autoencoder": ..., "discriminator": ...}`` with one optimizer each
(``optax.multi_transform``). One scalar loss gives both gradients in one backward pass:
the generator terms see the discriminator's params through ``stop_gradient``, and the
discriminator's hinge loss sees the reconstructions through ``stop_gradient``.
The discriminator's BatchNorm statistics are the model state.

Encoding a dataset to latents (the input of the second stage) is ``--mode=encode``
(``lsgm_jax.encode_latents``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lsgm_jax import optim
from lsgm_jax.methods.base import Method
from lsgm_jax.models import autoencoder as ae_lib
from lsgm_jax.models.discriminator import NLayerDiscriminator
from lsgm_jax.objectives import autoencoder_losses as losses
from lsgm_jax.presets import autoencoder as ae_presets
from lsgm_jax.train_state import TrainState

PyTree = Any


class ConfigError(ValueError):
  """An invalid ``config.autoencoder`` value; the message names the field."""


GROUPS = ("autoencoder", "discriminator")
LATENT_NORMS = ("global", "channel")


def autoencoder_config(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
                       ) -> ae_lib.AutoencoderConfig:
  """The architecture of ``config.autoencoder`` for images of ``image_shape`` (H, W, C).

  ``preset`` (kl-f4 | kl-f8 | kl-f16) takes the LDM first stage's architecture and its
  attention placement (relative to 256x256); "" builds from the fields, with attention
  resolutions relative to the data's image size.
  """
  a = config.autoencoder
  if len(image_shape) != 3:
    raise ConfigError(f"method 'autoencoder' needs image data, config.data.name="
                      f"{config.data.name!r} has shape {tuple(image_shape)}")
  channels = int(image_shape[-1])
  if a.preset:
    if a.preset not in ae_presets.PRESETS:
      raise ConfigError(f"config.autoencoder.preset={a.preset!r} is not one of "
                        f"{sorted(ae_presets.PRESETS)} (or '' for the fields)")
    import dataclasses  # pylint: disable=g-import-not-at-top
    cfg = dataclasses.replace(ae_presets.PRESETS[a.preset], in_channels=channels,
                              out_ch=channels)
  else:
    try:
      cfg = ae_lib.AutoencoderConfig(
          ch=int(a.ch), ch_mult=tuple(int(m) for m in a.ch_mult),
          num_res_blocks=int(a.num_res_blocks),
          attn_resolutions=tuple(int(r) for r in a.attn_resolutions),
          resolution=int(image_shape[0]), in_channels=channels, out_ch=channels,
          z_channels=int(a.z_channels), embed_dim=int(a.embed_dim),
          dropout=float(a.dropout), num_groups=int(a.num_groups))
    except ValueError as e:
      raise ConfigError(f"config.autoencoder: {e}") from e
  try:
    cfg.latent_shape(image_shape)
  except ValueError as e:
    raise ConfigError(f"config.autoencoder.ch_mult: {e}") from e
  return cfg


class Autoencoder(Method):
  """First-stage training; ``generate`` decodes N(0, I) latents (see its docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    a = config.autoencoder
    self.image_shape = tuple(data_info.shape)
    self.ae_config = autoencoder_config(config, self.image_shape)
    self.model = ae_lib.AutoencoderKL(self.ae_config)
    self.latent_shape = self.ae_config.latent_shape(self.image_shape)
    self.discriminator = NLayerDiscriminator(ndf=int(a.disc_ndf), n_layers=int(a.disc_layers))
    for field in ("l1_weight", "perceptual_weight", "adversarial_weight", "kl_weight"):
      if float(a[field]) < 0:
        raise ConfigError(f"config.autoencoder.{field}={a[field]} must be >= 0")
    if float(a.perceptual_weight) > 0 and not a.perceptual_weights_path:
      raise ConfigError(
          f"config.autoencoder.perceptual_weight={a.perceptual_weight} needs "
          "config.autoencoder.perceptual_weights_path (an npz, layout in "
          "lsgm_jax/models/perceptual.py); set perceptual_weight=0 to train without it")
    if a.latent_norm not in LATENT_NORMS:
      raise ConfigError(f"config.autoencoder.latent_norm={a.latent_norm!r} is not one of "
                        f"{LATENT_NORMS}")
    if int(a.disc_start) < 0:
      raise ConfigError(f"config.autoencoder.disc_start={a.disc_start} must be >= 0")
    low, high = data_info.data_range
    self.data_range = float(high - low)
    self.centered = low < 0

  @functools.cached_property
  def perceptual(self):
    """The LPIPS-style network, read on first use (a training step), or None."""
    a = self.config.autoencoder
    if float(a.perceptual_weight) == 0:
      return None
    from lsgm_jax.models.perceptual import load_perceptual_net  # pylint: disable=g-import-not-at-top
    return load_perceptual_net(a.perceptual_weights_path)

  # --- params and optimizers -----------------------------------------------------------

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    ae_rng, disc_rng = jax.random.split(rng)
    x = jnp.zeros((1,) + self.image_shape, jnp.float32)
    ae_params = self.model.init(ae_rng, x)["params"]
    disc_vars = self.discriminator.init(disc_rng, x, train=False)
    params = {"autoencoder": ae_params, "discriminator": disc_vars["params"]}
    return params, {"discriminator": {"batch_stats": disc_vars["batch_stats"]}}

  def make_optimizer(self) -> optax.GradientTransformation:
    """Adam for each group (LDM: two optimizers); the discriminator's lr is
    ``autoencoder.disc_lr`` (0 = ``optim.lr``)."""
    steps = self.config.training.num_train_steps
    disc_optim = ml_collections.ConfigDict(self.config.optim.to_dict())
    if float(self.config.autoencoder.disc_lr) > 0:
      disc_optim.lr = float(self.config.autoencoder.disc_lr)
    transforms = {"autoencoder": optim.make_optimizer(self.config.optim, steps),
                  "discriminator": optim.make_optimizer(disc_optim, steps)}
    return optax.multi_transform(
        transforms, lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})

  def warm_start(self, state: TrainState) -> TrainState:
    """Fresh start from ``autoencoder.init_checkpoint``: either an LDM checkpoint file
    (converted; the paper's pretrained first stages) or an earlier lsgm_jax workdir."""
    path = self.config.autoencoder.init_checkpoint
    if not path:
      return state
    params = load_autoencoder_params(path, self.ae_config)
    new = dict(state.params, autoencoder=params)
    return state.replace(params=new, ema_params=jax.tree.map(np.copy, new))

  # --- the loss --------------------------------------------------------------------------

  def _images(self, x: jax.Array) -> jax.Array:
    """Images in [-1, 1] for the perceptual network (LPIPS's input range)."""
    return x if self.centered else 2.0 * x - 1.0

  def _disc(self, params, model_state, x):
    logits, updates = self.discriminator.apply(
        {"params": params, **model_state}, x, train=True, mutable=["batch_stats"])
    return logits, updates

  def _reconstruction_terms(self, x, recon):
    """Per-example l1_weight * L1 + perceptual_weight * LPIPS, and the LPIPS term."""
    a = self.config.autoencoder
    rec = float(a.l1_weight) * losses.l1_loss(x, recon)
    lpips = jnp.zeros(x.shape[0], jnp.float32)
    if self.perceptual is not None:
      net = self.perceptual
      lpips = losses.lpips_distance(net.features(self._images(x)),
                                    net.features(self._images(recon)), net.lin)
      rec = rec + float(a.perceptual_weight) * lpips
    return rec, lpips

  def loss(self, params, model_state, batch, rng, step):
    a = self.config.autoencoder
    x = batch["x"]
    ae_params = params["autoencoder"]
    variables = {"params": ae_params}
    noise_rng, dropout_rng = jax.random.split(rng)
    rngs = {"dropout": dropout_rng}
    mean, logvar = self.model.apply(variables, x, True, method=self.model.encode, rngs=rngs)
    z = mean
    if a.sample_posterior:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(noise_rng, mean.shape, mean.dtype)
    hidden = self.model.apply(variables, z, True, True, method=self.model.decode, rngs=rngs)
    conv_out = ae_params["decoder"]["conv_out"]
    recon = self._head(conv_out, conv_out["kernel"], hidden)
    rec, lpips = self._reconstruction_terms(x, recon)
    nll = jnp.mean(rec)
    image_dims = float(np.prod(self.image_shape))
    kl = jnp.mean(losses.gaussian_kl(mean, logvar))
    total = nll + float(a.kl_weight) * kl / image_dims  # LDM's sum-over-pixels loss / D
    metrics = {"loss/l1": jnp.mean(losses.l1_loss(x, recon)), "loss/nll": nll,
               "loss/kl": kl, "loss/perceptual": jnp.mean(lpips)}
    new_model_state = model_state
    if float(a.adversarial_weight) > 0:
      # Before disc_start the GAN terms are multiplied by 0 (taming adopt_weight); the
      # cond skips computing them at all (the zero branch has the same outputs).
      on = step >= int(a.disc_start)
      adv_total, adv_metrics, disc_state = jax.lax.cond(
          on, functools.partial(self._adversarial_terms, x=x, hidden=hidden, recon=recon),
          functools.partial(self._no_adversarial_terms, x=x, recon=recon),
          params["discriminator"], model_state["discriminator"], ae_params)
      total = total + adv_total
      metrics.update(adv_metrics)
      new_model_state = dict(model_state, discriminator=disc_state)
    return total, (metrics, new_model_state)

  def _head(self, conv_out, kernel, h):
    """The decoder's conv_out as a function of its kernel (adaptive GAN weight)."""
    out = jax.lax.conv_general_dilated(h, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + conv_out["bias"]

  def _adversarial_terms(self, disc_params, disc_state, ae_params, *, x, hidden, recon):
    """Generator + discriminator hinge terms once the discriminator is on."""
    a = self.config.autoencoder
    conv_out = ae_params["decoder"]["conv_out"]
    frozen_disc = jax.lax.stop_gradient(disc_params)
    logits_gen, _ = self._disc(frozen_disc, disc_state, recon)
    g_loss = jnp.mean(losses.generator_adversarial_loss(logits_gen))
    if a.adaptive_disc_weight:
      h = jax.lax.stop_gradient(hidden)
      kernel = jax.lax.stop_gradient(conv_out["kernel"])
      nll_grad = jax.grad(lambda k: jnp.mean(
          self._reconstruction_terms(x, self._head(conv_out, k, h))[0]))(kernel)
      gan_grad = jax.grad(lambda k: jnp.mean(losses.generator_adversarial_loss(
          self._disc(frozen_disc, disc_state, self._head(conv_out, k, h))[0])))(kernel)
      d_weight = losses.adaptive_weight(nll_grad, gan_grad)
    else:
      d_weight = jnp.ones((), jnp.float32)
    # The discriminator's own pass: real images, then reconstructions without gradient.
    logits_real, updates = self._disc(disc_params, disc_state, jax.lax.stop_gradient(x))
    logits_fake, updates = self._disc(disc_params, updates, jax.lax.stop_gradient(recon))
    d_loss = jnp.mean(losses.hinge_discriminator_loss(logits_real, logits_fake))
    total = float(a.adversarial_weight) * d_weight * g_loss + d_loss
    metrics = {"loss/generator": g_loss, "loss/discriminator": d_loss,
               "adversarial/d_weight": d_weight, "adversarial/on": jnp.ones((), jnp.float32),
               "adversarial/logits_real": jnp.mean(logits_real),
               "adversarial/logits_fake": jnp.mean(logits_fake)}
    return total, metrics, updates

  def _no_adversarial_terms(self, disc_params, disc_state, ae_params, *, x, recon):
    """Zeros of the same structure (before ``disc_start``); the state is unchanged."""
    del disc_params, ae_params, x
    zero = jnp.zeros((), recon.dtype)
    total = zero
    metrics = {"loss/generator": zero, "loss/discriminator": zero,
               "adversarial/d_weight": zero, "adversarial/on": zero,
               "adversarial/logits_real": zero, "adversarial/logits_fake": zero}
    return total, metrics, disc_state

  # --- evaluation and sampling --------------------------------------------------------------

  def eval_terms(self, params, model_state, batch, rng):
    """Per example: L1, MSE, PSNR (dB) of the posterior-mean reconstruction, and the
    rate KL(q(z|x) || N(0, I)) in nats."""
    del model_state, rng
    x = batch["x"]
    recon, mean, logvar = self.model.apply({"params": params["autoencoder"]}, x)
    terms = {"l1": losses.l1_loss(x, recon), "mse": losses.mse(x, recon),
             "psnr": losses.psnr(x, recon, self.data_range),
             "kl": losses.gaussian_kl(mean, logvar)}
    if self.eval_lpips is not None:  # on [0, 1] images (issue 11 item 8)
      from lsgm_jax.evaluation import reconstruction  # pylint: disable=g-import-not-at-top
      unit = lambda a: (jnp.clip(self._images(a), -1.0, 1.0) + 1.0) / 2.0
      metrics = reconstruction.reconstruction_metrics(
          unit(x), unit(recon), self.eval_lpips, size=int(self.config.eval.lpips_size))
      terms.update(l2_unit=metrics["l2"], lpips=metrics["lpips"])
    return terms

  @functools.cached_property
  def eval_lpips(self):
    """The LPIPS network of ``config.eval.lpips_weights_path`` (None if unset)."""
    path = self.config.eval.lpips_weights_path
    if not path:
      return None
    from lsgm_jax.evaluation import reconstruction  # pylint: disable=g-import-not-at-top
    return reconstruction.load_lpips(path, "config.eval.lpips_weights_path")

  def reconstruct(self, state, x, rng):
    """Decoded posterior means (as ``eval_terms``): what reconstruction FID scores."""
    del rng
    return self.model.apply({"params": state.ema_params["autoencoder"]}, x)[0]

  def generate(self, params, model_state, rng, num):
    """Decodes z ~ N(0, I) (info ``prior_decodes`` = 1): the KL term is tiny (1e-6), so
    these are NOT samples of the data distribution, only a look at the decoder. A
    generative model of the latents is the second stage; to encode data use
    ``--mode=encode``."""
    del model_state
    z = jax.random.normal(rng, (num,) + self.latent_shape, jnp.float32)
    images = self.model.apply({"params": params["autoencoder"]}, z, method=self.model.decode)
    return images, {"nfe": jnp.ones((), jnp.float32), "prior_decodes": jnp.ones((), jnp.float32)}


def load_autoencoder_params(path: str, ae_config: ae_lib.AutoencoderConfig) -> PyTree:
  """Autoencoder params from an LDM checkpoint file (.ckpt / .safetensors, converted)
  or from an lsgm_jax workdir of this method (its EMA params)."""
  import os  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path):
    from lsgm_jax.models import autoencoder_convert  # pylint: disable=g-import-not-at-top
    return autoencoder_convert.load_ldm_checkpoint(path, ae_config)
  from lsgm_jax import checkpoint  # pylint: disable=g-import-not-at-top
  stage = checkpoint.load_stage(path, "config.autoencoder.init_checkpoint")
  method = stage["meta"].get("fingerprint", {}).get("method")
  if method != "autoencoder" or "autoencoder" not in stage["ema_params"]:
    raise ValueError(f"{path}: the checkpoint there was written by method {method!r}, "
                     "not by an autoencoder run")
  params = stage["ema_params"]["autoencoder"]
  from lsgm_jax.models import autoencoder_convert  # pylint: disable=g-import-not-at-top
  expected = jax.tree.map(lambda s: tuple(s.shape), autoencoder_convert.abstract_params(ae_config))
  if jax.tree.map(np.shape, params) != expected:
    raise ValueError(f"{path}: the autoencoder checkpoint there has another architecture "
                     "than config.autoencoder; use the config it was trained with")
  return params
