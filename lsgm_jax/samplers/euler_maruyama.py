"""Euler-Maruyama on the reverse-time SDE, plus the pieces every sampler shares.

Tutorial, "Diffusion as ODE": the reverse SDE dx = [f - G G^T score] dt + G dw-bar is
integrated from t = T to eps with Euler-Maruyama (Song et al. 2021, Sec. 4.2). The whole
chain is one ``lax.scan``; the sampler is ``jax.jit``-compiled with the SDE, score
function, shape and options static, so a 1000-step chain traces ``score_fn`` once.

Shared helpers (used by the other samplers): :func:`prior_state`, :func:`split_state`,
:func:`denoising_step`, :func:`step_keys`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lsgm_jax.samplers.time_grid import step_table
from lsgm_jax.sde.base import SDE, Array, ScoreFn
from lsgm_jax.sde.cld import CLD

Info = dict[str, Any]


def is_augmented(sde: SDE) -> bool:
  """True for processes on an augmented state u = (x, v) (CLD)."""
  return isinstance(sde, CLD)


def state_shape(sde: SDE, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of the sampler's state: ``shape`` itself, or (x, v) on the last axis for CLD."""
  if is_augmented(sde):
    return tuple(shape[:-1]) + (2 * shape[-1],)
  return tuple(shape)


def prior_state(sde: SDE, rng: Array, shape: tuple[int, ...]) -> Array:
  """Draws the initial state of a reverse-time chain from the prior p_T.

  Args:
    sde: the forward process.
    rng: PRNG key.
    shape: data shape ``[B, ...]`` (for CLD the x part only).

  Returns:
    ``[B, ...]`` state; for CLD u = (x, v) with the last axis doubled.
  """
  return sde.prior_sample(rng, state_shape(sde, shape))


def split_state(sde: SDE, u: Array) -> tuple[Array, Info]:
  """Splits the final state into the data sample and extra info (CLD: final ``"v"``)."""
  if is_augmented(sde):
    x, v = jnp.split(u, 2, axis=-1)
    return x, {"v": v}
  return u, {}


def step_keys(rng: Array, num: int) -> Array:
  """``num`` per-step keys ``fold_in(rng, i)`` (DESIGN.md: a key per step by fold_in)."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num))


def batch_time(t: Array | float, u: Array) -> Array:
  """The scalar time ``t`` as a per-example ``[B]`` vector matching ``u``'s dtype."""
  return jnp.full((u.shape[0],), t, dtype=u.dtype)


def denoising_step(sde: SDE, score_fn: ScoreFn, u: Array, eps: float) -> Array:
  """One noise-free reverse step from t = eps to t = 0 (one extra NFE).

  The mean of an Euler-Maruyama step of the reverse SDE, u - [f - G G^T score] eps, as in
  score_sde's noise removal and the CLD-SGM denoising step; for VE it is Tweedie's
  x + sigma^2 score.

  Args:
    sde: forward process.
    score_fn: ``score_fn(u, t) -> score``.
    u: state at t = eps.
    eps: the final time of the chain.

  Returns:
    The denoised state (same shape as ``u``).
  """
  drift, _ = sde.reverse(score_fn).sde(u, batch_time(eps, u))
  return u - drift * eps


def finish(sde: SDE, score_fn: ScoreFn, u: Array, eps: float, denoise: bool,
           nfe: int | Array) -> tuple[Array, Info]:
  """Optional denoising, split of the CLD state, and the ``info`` dict with ``"nfe"``."""
  if denoise:
    u = denoising_step(sde, score_fn, u, eps)
    nfe = nfe + 1
  x, info = split_state(sde, u)
  info["nfe"] = jnp.asarray(nfe, jnp.int32)
  return x, info


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "eps", "striding", "denoise"))
def euler_maruyama(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                   num_steps: int = 1000, eps: float = 1e-3, striding: str = "linear",
                   denoise: bool = False) -> tuple[Array, Info]:
  """Samples by Euler-Maruyama on the reverse SDE (tutorial, "Diffusion as ODE").

  Each step from t to t - dt is u <- u - [f - G G^T score] dt + G sqrt(dt) z.

  Args:
    rng: PRNG key.
    sde: forward process (VP, sub-VP, VE, CLD, ...), hashable.
    score_fn: ``score_fn(u, t) -> score`` (for CLD the velocity score), hashable; it is a
      static argument, so pass the same object to reuse the compiled program (or call
      from inside your own ``jax.jit`` with parameters as traced arguments).
    shape: data shape ``[B, ...]`` (for CLD the x part).
    num_steps: number of steps, all of them one ``lax.scan``.
    eps: final time (default 1e-3).
    striding: ``"linear"`` or ``"quadratic"`` time grid.
    denoise: add one noise-free step from eps to 0 (:func:`denoising_step`).

  Returns:
    (samples ``shape``, info) with ``info["nfe"]`` = num_steps (+1 with denoise); for CLD
    ``info["v"]`` holds the final velocity.
  """
  rng_prior, rng_steps = jax.random.split(rng)
  u = prior_state(sde, rng_prior, shape)
  reverse = sde.reverse(score_fn)
  t_start, dt = step_table(num_steps, t_max=sde.T, eps=eps, striding=striding)

  def step(u, inputs):
    key, t, h = inputs
    drift, diffusion = reverse.sde(u, batch_time(t, u))
    z = jax.random.normal(key, u.shape, u.dtype)
    return u - drift * h + diffusion * jnp.sqrt(h) * z, None

  u, _ = jax.lax.scan(step, u, (step_keys(rng_steps, num_steps), t_start, dt))
  return finish(sde, score_fn, u, eps, denoise, num_steps)
