"""Losses of the first stage (latent VAE paper, §3.1: "an L1 loss with perceptual and
patch-based adversarial losses", as in Esser et al., 2021 and Rombach et al., 2022).

Pure functions of arrays. Per-example terms are returned with shape ``[B]``; the
discriminator terms are means over patches. LDM's ``LPIPSWithDiscriminator`` sums the
pixel terms over the image; here every term is that sum divided by the number of image
dimensions D, so the LDM weights carry over unchanged (kl_weight = 1e-6 means the same
as in LDM, and the adaptive GAN weight is a ratio of gradient norms, unchanged by a
common factor).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _per_example_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def l1_loss(x: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """Mean absolute error per example, ``[B]``."""
  return _per_example_mean(jnp.abs(x - reconstruction))


def mse(x: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """Mean squared error per example, ``[B]``."""
  return _per_example_mean(jnp.square(x - reconstruction))


def psnr(x: jax.Array, reconstruction: jax.Array, data_range: float) -> jax.Array:
  """Peak signal-to-noise ratio in dB per example: 10 log10(range^2 / MSE), ``[B]``."""
  return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse(x, reconstruction), 1e-12))


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent, per example, ``[B]``
  (LDM DiagonalGaussianDistribution.kl)."""
  terms = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)


def lpips_distance(features_a: Sequence[jax.Array], features_b: Sequence[jax.Array],
                   lin: Sequence[jax.Array], eps: float = 1e-10) -> jax.Array:
  """LPIPS (Zhang et al., 2018) per example, ``[B]``.

  For each layer: unit-normalise the features over channels, square the difference,
  weight channels by the layer's linear head, average over positions; sum the layers.

  Args:
    features_a: per layer ``[B, h, w, C_l]`` features of the first images.
    features_b: the same layers for the second images.
    lin: per layer ``[C_l]`` non-negative head weights.
    eps: LPIPS's ``normalize_tensor`` epsilon.
  """
  total = 0.0
  for fa, fb, w in zip(features_a, features_b, lin):
    na = fa / (jnp.sqrt(jnp.sum(jnp.square(fa), axis=-1, keepdims=True)) + eps)
    nb = fb / (jnp.sqrt(jnp.sum(jnp.square(fb), axis=-1, keepdims=True)) + eps)
    total = total + jnp.mean(jnp.sum(jnp.square(na - nb) * w, axis=-1), axis=(1, 2))
  return total


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Hinge loss of the discriminator per example (taming ``hinge_d_loss``), ``[B]``:
  0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
  return 0.5 * (_per_example_mean(jax.nn.relu(1.0 - logits_real))
                + _per_example_mean(jax.nn.relu(1.0 + logits_fake)))


def generator_adversarial_loss(logits_fake: jax.Array) -> jax.Array:
  """The generator's hinge-GAN term -mean D(x_hat) per example, ``[B]``."""
  return -_per_example_mean(logits_fake)


def discriminator_factor(step: jax.Array, disc_start: int) -> jax.Array:
  """1 once ``step >= disc_start``, else 0 (taming ``adopt_weight``)."""
  return (step >= disc_start).astype(jnp.float32)


def adaptive_weight(nll_grad: jax.Array, gan_grad: jax.Array, max_weight: float = 1e4
                    ) -> jax.Array:
  """LDM's balance of the GAN term: ||grad nll|| / (||grad g|| + 1e-4), clipped to
  [0, max_weight], both gradients taken w.r.t. the decoder's last layer; no gradient."""
  ratio = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(gan_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))
