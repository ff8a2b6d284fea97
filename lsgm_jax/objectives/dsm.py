"""Denoising score matching for the scalar-diffusion SDEs (VP, sub-VP, VE).

Tutorial, "denoising score matching" objective; Song et al. 2021, eq. (7), with the
weightings of score_sde's ``losses.get_sde_loss_fn`` (continuous time):

  J(theta) = E_t E_{x0} E_{z} [ lambda(t) || s_theta(x_t, t) + z / std(t) ||^2 ],
  x_t = mean(t) x0 + std(t) z,  t ~ U(loss_eps, 1).

Per-example values are SUMS over the non-batch dimensions by default (``reduce="sum"``),
which is what makes ``weighting="likelihood"`` a likelihood bound; ``reduce="mean"``
divides by the number of dimensions. The CLD losses (``cld_dsm_loss``, ``hsm_loss``) live
in ``objectives/hsm.py``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE, Array, ScoreFn

Weighting = Literal["likelihood", "simple", "none", "v"]
Reduce = Literal["sum", "mean"]


def reduce_per_example(x: Array, reduce: Reduce = "sum") -> Array:
  """Sums (or averages) ``[B, ...]`` over all but the batch axis, giving ``[B]``."""
  flat = jnp.reshape(x, (x.shape[0], -1))
  if reduce == "sum":
    return jnp.sum(flat, axis=-1)
  if reduce == "mean":
    return jnp.mean(flat, axis=-1)
  raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def sample_time(rng: Array, batch: int, loss_eps: float = 1e-5, t_max: float = 1.0) -> Array:
  """t ~ U(loss_eps, t_max), shape ``[batch]`` (score_sde's ``eps`` cut-off)."""
  return jax.random.uniform(rng, (batch,), minval=loss_eps, maxval=t_max)


def dsm_loss(
    rng: Array,
    sde: SDE,
    score_fn: ScoreFn,
    x0: Array,
    *,
    weighting: Weighting = "none",
    loss_eps: float = 1e-5,
    reduce: Reduce = "sum",
    t: Array | None = None,
) -> Array:
  """Per-example continuous-time denoising score-matching loss.

  Weightings (Song et al. 2021, eq. (7); "likelihood": Song et al. 2021b, maximum
  likelihood training of SGMs, Theorem 1):
    * ``"none"``: lambda = std^2, i.e. ||std * s + z||^2 (score_sde ``likelihood_weighting
      =False``; the usual choice).
    * ``"simple"``: ||eps_pred - eps||^2 with eps_pred = -std * s (DDPM's L_simple in the
      noise-prediction form). With a score-parameterised network this equals ``"none"``
      exactly; it exists so configs can name DDPM's loss (pair with ``reduce="mean"``).
    * ``"likelihood"``: lambda = g(t)^2, i.e. g^2 ||s + z / std||^2. With ``reduce="sum"``
      and no ``1/2`` factor (score_sde convention), 1/2 * E_t[loss] is the score-matching
      term of the bound -log p(x0) <= -E log p_T + 1/2 int g^2 E||s - grad log p_t||^2
      (up to a score-independent constant).
    * ``"v"``: lambda = std^2 / alpha^2, ||v_pred - v||^2 for VP (Salimans & Ho 2022).

  Args:
    rng: PRNG key (split internally for t and the noise).
    sde: a scalar-diffusion SDE (``VPSDE``, ``SubVPSDE``, ``VESDE``).
    score_fn: ``score_fn(x_t, t) -> score`` with ``x_t`` ``[B, ...]`` and ``t`` ``[B]``.
    x0: data ``[B, ...]``.
    weighting: ``"none"``, ``"simple"`` or ``"likelihood"``.
    loss_eps: smallest time; t ~ U(loss_eps, T).
    reduce: ``"sum"`` (default) or ``"mean"`` over non-batch dimensions.
    t: optional fixed times ``[B]`` (then ``rng`` only draws the noise).

  Returns:
    ``[B]`` per-example losses.
  """
  rng_t, rng_z = jax.random.split(rng)
  if t is None:
    t = sample_time(rng_t, x0.shape[0], loss_eps, sde.T)
  x_t, z, std = sde.sample_marginal(rng_z, x0, t)
  score = score_fn(x_t, t)
  if weighting in ("none", "simple"):
    # lambda(t) = std^2: || std * s + z ||^2 = || -std * s - z ||^2 = || eps_pred - eps ||^2.
    return reduce_per_example(jnp.square(std * score + z), reduce)
  if weighting == "likelihood":
    _, g = sde.sde(jnp.zeros_like(x0), t)
    g2 = jnp.broadcast_to(jnp.square(g), x0.shape)
    return reduce_per_example(g2 * jnp.square(score + z / std), reduce)
  if weighting == "v":
    # lambda(t) = std^2 / alpha^2 (VP): with x_hat = (x_t + std^2 s) / alpha and
    # v = alpha z - std x0 this is ||v_pred - v||^2, i.e. the x-loss weighted by SNR + 1
    # (Salimans & Ho 2022, Sec. 4), the loss a v-predicting network is trained with.
    alpha, _ = sde.marginal(jnp.ones_like(x0), t)
    return reduce_per_example(jnp.square((std * score + z) / alpha), reduce)
  raise ValueError(f"weighting must be 'likelihood', 'simple', 'none' or 'v', got "
                   f"{weighting!r}")
