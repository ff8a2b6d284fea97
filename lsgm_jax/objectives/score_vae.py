"""ScoreVAE (score_vae_paper.txt): the conditional score by Bayes' rule for scores and the
encoder objective L_beta, as pure functions of callables and arrays.

    s(x_t, z, t) = s_prior(x_t, t) + grad_{x_t} log q_t(z | x_t)              (section 3.3)
    L_beta = E [ 1/2 g(t)^2 || grad log p(x_t | x_0) - s(x_t, z, t) ||^2 ]
             + beta KL( q_0(z | x_0) || N(0, I) )                              (section 3.5)

with z ~ q_0(z | x_0) = N(mu(x_0, 0), diag(exp(lv(x_0, 0)))) reparameterised,
t ~ U(t_eps, T) and x_t = alpha_t x_0 + sigma_t n, so grad log p(x_t | x_0) = -n / sigma_t.

log q_t(z | x_t) is a Gaussian whose mean AND log-variance are outputs of the encoder at
(x_t, t). The exact log-density, -1/2 sum[(z - mu)^2 / exp(lv) + lv + log 2 pi], has a
gradient through lv in both terms. The paper code (conditional_score_diffusion@b188acd3,
``losses.py::get_scoreVAE_loss_fn`` and ``sampling/conditional.py``) codes only
-1/2 sum (z - mu)^2 / exp(lv), i.e. it drops -1/2 sum lv(x_t, t) although lv depends on
x_t, so its "score" of q is not the score of a normalised density. ``exact=True`` is the
default here; ``exact=False`` reproduces the reference.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE

Array = jax.Array
# encode(x, t) -> (mean [B, D], log_variance [B, D])
EncodeFn = Callable[[Array, Array], tuple[Array, Array]]
ScoreFn = Callable[[Array, Array], Array]

WEIGHTINGS = ("g2", "sigma2")


def _sum_except_batch(x: Array) -> Array:
  return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def gaussian_log_q(z: Array, mean: Array, logvar: Array, exact: bool = True) -> Array:
  """log N(z; mean, diag(exp(logvar))) per example ``[B]`` (``exact=False``: the paper
  code's form without the log-variance and 2 pi terms)."""
  quad = jnp.sum(jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)
  if not exact:
    return -0.5 * quad
  return -0.5 * (quad + jnp.sum(logvar, axis=-1) + z.shape[-1] * math.log(2.0 * math.pi))


def kl_standard_normal(mean: Array, logvar: Array) -> Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example ``[B]``."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def latent_score(encode: EncodeFn, z: Array, x: Array, t: Array, exact: bool = True
                 ) -> Array:
  """grad_x log q_t(z | x) for every example, by reverse-mode autodiff through the
  encoder. Summing the per-example log-densities before the gradient is exact because
  example b's density depends on x_b only (the encoders normalise per example)."""
  def total(x_):
    mean, logvar = encode(x_, t)
    return jnp.sum(gaussian_log_q(z, mean, logvar, exact))
  return jax.grad(total)(x)


def conditional_score_fn(prior_score: ScoreFn, encode: EncodeFn, z: Array,
                         exact: bool = True) -> ScoreFn:
  """``score(x_t, t) = prior_score(x_t, t) + grad_{x_t} log q_t(z | x_t)`` (Bayes' rule for
  scores, paper section 3.3), usable by every sampler of ``lsgm_jax.samplers``."""
  def score(x, t):
    return prior_score(x, t) + latent_score(encode, z, x, t, exact)
  return score


def l_beta_terms(rng: Array, sde: SDE, prior_score: ScoreFn, encode: EncodeFn, x0: Array,
                 *, beta: float, exact: bool = True, weighting: str = "g2",
                 t_eps: float = 1e-3) -> dict[str, Array]:
  """Per-example terms of L_beta (paper section 3.5), each ``[B]``.

  Args:
    rng: PRNG key (latent draw, time, noise).
    sde: the prior's forward process (VP / sub-VP / VE).
    prior_score: the frozen unconditional score ``s(x_t, t)``.
    encode: ``encode(x, t) -> (mean, log_variance)``; the posterior is ``encode(x_0, 0)``.
    x0: data ``[B, ...]``.
    beta: KL weight (paper: 0.01).
    exact: exact Gaussian log q (True) or the reference's form (False).
    weighting: ``"g2"``: 1/2 g(t)^2 (paper; reference code) | ``"sigma2"``: 1/2 sigma_t^2
      (the 2024 ScoreVAE rewrite).
    t_eps: t ~ U(t_eps, T).

  Returns:
    ``{"score_matching", "kl", "loss"}`` with loss = score_matching + beta kl.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting {weighting!r} is not one of {WEIGHTINGS}")
  z_rng, t_rng, n_rng = jax.random.split(rng, 3)
  batch = x0.shape[0]
  mean0, logvar0 = encode(x0, jnp.zeros((batch,), x0.dtype))
  kl = kl_standard_normal(mean0, logvar0)
  z = mean0 + jnp.exp(0.5 * logvar0) * jax.random.normal(z_rng, mean0.shape, mean0.dtype)
  t = jax.random.uniform(t_rng, (batch,), x0.dtype, minval=t_eps, maxval=sde.T)
  x_t, noise, std = sde.sample_marginal(n_rng, x0, t)
  score = conditional_score_fn(prior_score, encode, z, exact)(x_t, t)
  if weighting == "g2":
    _, g = sde.sde(jnp.zeros_like(x0), t)
    weight = jnp.square(g)
  else:
    weight = jnp.square(std)
  score_matching = 0.5 * _sum_except_batch(weight * jnp.square(score + noise / std))
  return {"score_matching": score_matching, "kl": kl, "loss": score_matching + beta * kl}


def per_image_l2(x: Array, y: Array) -> Array:
  """The paper's "L2": the Euclidean norm of the flattened difference, per image ``[B]``
  (EncoderOnlyPretrainedScoreVAEmodel.test_step; not the MSE)."""
  return jnp.sqrt(_sum_except_batch(jnp.square(x - y)))


def beta_vae_terms(rng: Array, encode: Callable[[Array], tuple[Array, Array]],
                   decode: Callable[[Array], Array], x_unit: Array, *, beta: float
                   ) -> dict[str, Array]:
  """The beta-VAE baseline's loss per example (paper code ``lightning_modules/VAE.py``):
  the un-squared per-image L2 norm ||x - x_hat|| plus beta KL; ``decode`` returns images
  in [0, 1] (a sigmoid of the decoder), ``x_unit`` is in [0, 1]."""
  mean, logvar = encode(x_unit)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
  recon = per_image_l2(x_unit, decode(z))
  kl = kl_standard_normal(mean, logvar)
  return {"recon_l2": recon, "kl": kl, "loss": recon + beta * kl}


__all__ = ["WEIGHTINGS", "gaussian_log_q", "kl_standard_normal", "latent_score",
           "conditional_score_fn", "l_beta_terms", "per_image_l2", "beta_vae_terms"]
