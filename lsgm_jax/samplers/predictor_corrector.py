"""Predictor-corrector sampling (tutorial, "Predictor-Corrector Method"; Song et al. 2021,
Sec. 4.2 and Algorithms 2-3).

At each time t_i the corrector (Langevin MCMC at the fixed noise level t_i, step size set
by a signal-to-noise ratio) runs ``n_corrector`` times, then the predictor moves to
t_{i+1}. The predictor is the reverse-diffusion one: the reverse of the SDE's own
discretisation (``ReverseSDE.discretize``: DDPM for VP, SMLD for VE, Euler-Maruyama
otherwise). All steps are one ``lax.scan``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lsgm_jax.samplers.euler_maruyama import (Info, batch_time, finish, is_augmented,
                                              prior_state, step_keys)
from lsgm_jax.samplers.time_grid import step_table
from lsgm_jax.sde.base import SDE, Array, ScoreFn, batch_broadcast

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
CORRECTORS = ("langevin", "none")


def _per_example_norm(a: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(jnp.reshape(a, (a.shape[0], -1))), axis=-1))


def langevin_corrector_step(rng: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array,
                            dt: Array, snr: float) -> Array:
  """One Langevin MCMC step at fixed time t (Song et al. 2021, Algorithm 4).

  x <- x + h score + sqrt(2 h) z with h = 2 alpha (snr ||z|| / ||score||)^2. The norms are
  batch means of per-example norms, as in score_sde, so the step size is stable for
  low-dimensional data where a single example's score can vanish. alpha is the DDPM
  1 - beta_i of the step for VP-type SDEs (``sde.transition_alpha``), else 1.

  Args:
    rng: PRNG key.
    sde: forward process.
    score_fn: ``score_fn(x, t) -> score``.
    x: state ``[B, ...]``.
    t: ``[B]`` time of the noise level.
    dt: scalar step size of the sampler's time grid (for alpha).
    snr: target signal-to-noise ratio r.

  Returns:
    The updated state.
  """
  score = score_fn(x, t)
  z = jax.random.normal(rng, x.shape, x.dtype)
  if hasattr(sde, "transition_alpha"):
    alpha = batch_broadcast(sde.transition_alpha(t, dt), x)
  else:
    alpha = 1.0
  ratio = jnp.mean(_per_example_norm(z)) / jnp.mean(_per_example_norm(score))
  h = 2.0 * alpha * (snr * ratio)**2
  return x + h * score + jnp.sqrt(2.0 * h) * z


@functools.partial(
    jax.jit,
    static_argnames=("sde", "score_fn", "shape", "num_steps", "n_corrector", "snr",
                     "predictor", "corrector", "eps", "striding", "denoise"))
def predictor_corrector(rng: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                        num_steps: int = 1000, n_corrector: int = 1, snr: float = 0.16,
                        predictor: str = "reverse_diffusion", corrector: str = "langevin",
                        eps: float = 1e-3, striding: str = "linear",
                        denoise: bool = False) -> tuple[Array, Info]:
  """PC sampler: Langevin corrector then reverse-diffusion predictor at each step.

  Args:
    rng: PRNG key.
    sde: forward process (VP, sub-VP, VE); not CLD (use ``sscs``).
    score_fn: ``score_fn(x, t) -> score``, hashable (static).
    shape: sample shape ``[B, ...]``.
    num_steps: number of predictor steps.
    n_corrector: Langevin steps per time (score_sde's ``n_steps_each``).
    snr: corrector signal-to-noise ratio (0.16 for VE, ~0.01-0.16 for VP).
    predictor: one of ``PREDICTORS``.
    corrector: one of ``CORRECTORS``.
    eps: final time.
    striding: ``"linear"`` or ``"quadratic"``.
    denoise: one extra noise-free step from eps to 0.

  Returns:
    (samples, info) with ``info["nfe"]`` = num_steps * (n_corrector + 1) for the default
    predictor and corrector (a ``"none"`` part contributes 0), +1 with denoise.

  Raises:
    ValueError: unknown predictor/corrector or an augmented (CLD) SDE.
  """
  if predictor not in PREDICTORS:
    raise ValueError(f"unknown predictor {predictor!r}; valid: {', '.join(PREDICTORS)}")
  if corrector not in CORRECTORS:
    raise ValueError(f"unknown corrector {corrector!r}; valid: {', '.join(CORRECTORS)}")
  if is_augmented(sde):
    raise ValueError("predictor_corrector needs a full score; for CLD use sscs or "
                     "euler_maruyama")
  n_corr = n_corrector if corrector == "langevin" else 0
  rng_prior, rng_steps = jax.random.split(rng)
  x = prior_state(sde, rng_prior, shape)
  reverse = sde.reverse(score_fn)
  t_start, dt = step_table(num_steps, t_max=sde.T, eps=eps, striding=striding)

  def step(x, inputs):
    key, t, h = inputs
    tb = batch_time(t, x)
    for j in range(n_corr):  # static, small: n_corrector score calls per step.
      x = langevin_corrector_step(jax.random.fold_in(key, j + 1), sde, score_fn, x, tb, h,
                                  snr)
    z = jax.random.normal(jax.random.fold_in(key, 0), x.shape, x.dtype)
    if predictor == "reverse_diffusion":
      # Song et al. 2021, eq. (46): x_{i-1} = x_i - f_i + G_i G_i^T score + G_i z.
      f, g = reverse.discretize(x, tb, h)
      x = x - f + g * z
    elif predictor == "euler_maruyama":
      drift, diffusion = reverse.sde(x, tb)
      x = x - drift * h + diffusion * jnp.sqrt(h) * z
    return x, None

  x, _ = jax.lax.scan(step, x, (step_keys(rng_steps, num_steps), t_start, dt))
  per_step = n_corr + (0 if predictor == "none" else 1)
  return finish(sde, score_fn, x, eps, denoise, num_steps * per_step)
