"""Annealed Langevin dynamics (NCSN; tutorial, "Using Multiple Noise Scales" and "The total
sampling algorithm"; Song & Ermon 2019, Algorithm 1).

Noise levels sigma_1 > ... > sigma_L are the SDE's marginal stds at times evenly spaced
from T to eps; for the VE SDE sigma(t) = sigma_min (sigma_max / sigma_min)^t, so they form
the geometric sequence of NCSN. At each level ``n_steps_each`` Langevin steps
x <- x + a_i score + sqrt(2 a_i) z run with a_i proportional to sigma_i^2 (NCSN's
a_i = lr sigma_i^2 / sigma_L^2, written as a_i = 2 (snr sigma_i)^2 so the step is
scale-free). Levels and steps are one flattened ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsgm_jax.samplers.euler_maruyama import (Info, batch_time, finish, is_augmented,
                                              prior_state, step_keys)
from lsgm_jax.sde.base import SDE, Array, ScoreFn


def noise_levels(sde: SDE, num_levels: int, eps: float = 1e-3) -> tuple[Array, Array]:
  """Times and marginal stds of the annealing levels (geometric sigmas for VE).

  Args:
    sde: forward process with a scalar-per-example marginal std.
    num_levels: L.
    eps: time of the last level.

  Returns:
    (t ``[L]`` decreasing from T to eps, sigma ``[L]``).
  """
  t = jnp.asarray(np.linspace(sde.T, eps, num_levels), jnp.float32)
  _, std = sde.marginal(jnp.zeros((num_levels, 1), jnp.float32), t)
  return t, jnp.broadcast_to(std, (num_levels, 1))[:, 0]


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_levels", "n_steps_each", "snr", "eps",
                     "denoise"))
def annealed_langevin(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                      num_levels: int = 100, n_steps_each: int = 10, snr: float = 0.3,
                      eps: float = 1e-3, denoise: bool = False) -> tuple[Array, Info]:
  """NCSN annealed Langevin sampler (Song & Ermon 2019, Algorithm 1).

  Made for the VE SDE (sigma levels geometric); on other SDEs it runs Langevin at each
  marginal, which is valid but not the NCSN schedule.

  Args:
    rng: PRNG key.
    sde: forward process, typically ``VESDE``.
    score_fn: ``score_fn(x, t) -> score``, hashable (static).
    shape: sample shape ``[B, ...]``.
    num_levels: number of noise levels L.
    n_steps_each: Langevin steps per level (NCSN's T).
    snr: step size a_i = 2 (snr sigma_i)^2, i.e. NCSN's lr / sigma_L^2 = 2 snr^2.
    eps: time of the smallest level.
    denoise: final Tweedie step x + sigma_L^2 score (NCSNv2's denoising; one more NFE).

  Returns:
    (samples, info) with ``info["nfe"]`` = num_levels * n_steps_each (+1 with denoise).

  Raises:
    ValueError: for an augmented (CLD) SDE.
  """
  if is_augmented(sde):
    raise ValueError("annealed_langevin needs a full score; for CLD use sscs")
  rng_prior, rng_steps = jax.random.split(rng)
  x = prior_state(sde, rng_prior, shape)
  t_levels, sigmas = noise_levels(sde, num_levels, eps)
  # Flatten (level, inner step) into one scan: each level repeated n_steps_each times.
  t_all = jnp.repeat(t_levels, n_steps_each)
  step_sizes = jnp.repeat(2.0 * (snr * sigmas)**2, n_steps_each)
  num = num_levels * n_steps_each

  def step(x, inputs):
    key, t, a = inputs
    z = jax.random.normal(key, x.shape, x.dtype)
    # NCSN, Algorithm 1: x <- x + alpha_i/2 score + sqrt(alpha_i) z, with a = alpha_i / 2.
    return x + a * score_fn(x, batch_time(t, x)) + jnp.sqrt(2.0 * a) * z, None

  x, _ = jax.lax.scan(step, x, (step_keys(rng_steps, num), t_all, step_sizes))
  if denoise:
    # Tweedie at the last level: x + sigma_L^2 score(x, sigma_L) (NCSNv2, Sec. 4.3 /
    # App.): for VE this is the noise-free reverse step from eps to 0.
    x = x + sigmas[-1]**2 * score_fn(x, batch_time(t_levels[-1], x))
    return finish(sde, score_fn, x, eps, False, num + 1)
  return finish(sde, score_fn, x, eps, False, num)
