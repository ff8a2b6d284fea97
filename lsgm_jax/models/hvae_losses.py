"""Gaussian algebra, classifier-free guidance and losses of the latent VAE's deep VAE.

* ``guided_prior``: the guided prior of classifier-free guidance for VAEs (latent VAE
  paper, eq. 2; appendix C);
* ``reconstruction_kl`` / ``loss_terms``: the fixed-variance reconstruction term and the
  per-example loss of appendix B (``HVAE.__call__`` returns the per-layer KLs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from lsgm_jax.models.hvae import HVAEOutput

Array = jax.Array


# The reference's ln 2, rounded (latent-vae-jax ``jax_utils.get_smoothed_variance``);
# kept so that imported weights give the reference's numbers (exact ln 2 moves the
# outputs by ~2e-4 relative).
SOFTPLUS_LN2 = 0.693


def smoothed_variance(raw: Array) -> Array:
  """Positive variance from an unconstrained output: softplus(c x) / c with c = 0.693
  (the reference's ln 2; ~1 at 0)."""
  return jax.nn.softplus(SOFTPLUS_LN2 * raw) / SOFTPLUS_LN2


def gaussian_kl(mean1: Array, var1: Array, mean2: Array, var2: Array) -> Array:
  """Elementwise KL( N(mean1, var1) || N(mean2, var2) )."""
  return 0.5 * (jnp.log(var2) - jnp.log(var1) - 1.0 + (var1 + (mean1 - mean2) ** 2) / var2)


def guided_mean_std(mu_c: Array, sigma_c: Array, mu_u: Array, sigma_u: Array,
                    w_mu: float | Array, w_sigma: float | Array) -> tuple[Array, Array]:
  """Mean and std of the guided prior of eq. 2 (``guided_prior`` returns the variance)."""
  mean = mu_c + w_mu * (mu_c - mu_u)
  # sigma_c (sigma_c / sigma_u)^w_sigma, in logs; exactly sigma_c when w_sigma == 0.
  std = sigma_c * jnp.exp(w_sigma * (jnp.log(sigma_c) - jnp.log(sigma_u)))
  return mean, std


def guided_prior(mu_c: Array, sigma_c: Array, mu_u: Array, sigma_u: Array,
                 w_mu: float | Array, w_sigma: float | Array) -> tuple[Array, Array]:
  """Guided prior of classifier-free guidance for VAEs (latent VAE paper, eq. 2).

  Args:
    mu_c, sigma_c: mean and std of the class-conditional prior.
    mu_u, sigma_u: mean and std of the unconditional (null-label) prior.
    w_mu, w_sigma: guidance weights of the mean and of the std.

  Returns:
    ``(mean, variance)`` of N(mu_c + w_mu (mu_c - mu_u),
    sigma_c^2 (sigma_c / sigma_u)^(2 w_sigma)).
  """
  mean, std = guided_mean_std(mu_c, sigma_c, mu_u, sigma_u, w_mu, w_sigma)
  return mean, std ** 2


def reconstruction_kl(x: Array, mean: Array, logvar: Array, sigma_q: float) -> Array:
  """Per-example KL( N(x, sigma_q^2) || N(mean, exp(logvar)) ) summed over pixels.

  The reconstruction term of appendix B: a fixed-variance target instead of a
  likelihood, which keeps the predicted variance from dropping below sigma_q^2.
  """
  kl = gaussian_kl(x, jnp.asarray(sigma_q ** 2, x.dtype), mean, jnp.exp(logvar))
  return jnp.sum(kl, axis=tuple(range(1, x.ndim)))


def loss_terms(output: HVAEOutput, x: Array, sigma_q: float,
               spectral_weight: float = 0.1,
               kl_weights: Array | None = None) -> dict[str, Array]:
  """Per-example loss terms of one posterior pass.

  Args:
    output: from ``HVAE.__call__``.
    x: the data that was encoded.
    sigma_q: reconstruction target std (Table 5).
    spectral_weight: weight of the spectral penalty (Table 5 "SR penalty").
    kl_weights: optional per-layer weights ``[L]`` (or ``[B, L]``) of the KL terms
      (e.g. a KL-balancing schedule); ones if None.

  Returns:
    dict of ``[B]`` arrays: ``recon``, ``kl`` (unweighted sum), ``loss`` (recon +
    weighted KL + spectral penalty, the penalty shared by every example).
  """
  recon = reconstruction_kl(x, output.mean, output.logvar, sigma_q)
  kl = jnp.sum(output.kl, axis=-1)
  weighted = kl if kl_weights is None else jnp.sum(output.kl * kl_weights, axis=-1)
  return {"recon": recon, "kl": kl,
          "loss": recon + weighted + spectral_weight * output.spectral}
