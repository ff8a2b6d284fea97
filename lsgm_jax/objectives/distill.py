"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models"), as pure functions of arrays.

Notation of the paper (Sec. 2): z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1
(the VP kernel of ``sde.VPSDE``: alpha_t = exp(-1/2 int_0^t beta), sigma_t^2 = 1 - alpha_t^2),
log-SNR lambda_t = log(alpha_t^2 / sigma_t^2), and a model's data prediction x_hat(z_t).

* DDIM step (paper eq. (4)/(5), deterministic DDIM of Song et al. 2021) from t to s < t:
  z_s = alpha_s x_hat + (sigma_s / sigma_t) (z_t - alpha_t x_hat).
* Algorithm 2 (progressive distillation): a student of N steps on the grid
  t_i = eps + (T - eps) i / N sees z_t at a grid time t = t_i; the teacher takes two DDIM
  steps t -> t' = t - 1/(2N) -> t'' = t - 1/N (in units of T - eps), and the student's
  target is the x_tilde for which ONE DDIM step from z_t lands on z_t'':

    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t).

  With the linear grid of ``samplers.time_grid`` the N-step grid is every other point of
  the 2N-step grid, so a student that predicts x_tilde reproduces the teacher's 2N-step
  DDIM chain with N steps (tests/test_distill.py checks this with the exact Gaussian score).
* v-prediction (paper Sec. 4, eq. (7) and Appendix D): v = alpha_t eps - sigma_t x, so
  x_hat = alpha_t z_t - sigma_t v_hat, well defined at SNR 0 where eps-prediction is not.
* Loss weighting (Sec. 4, "truncated SNR"): L = max(SNR_t, 1) ||x - x_hat||^2
  (``mean_loss_weight_type='snr_trunc'`` in the authors' configs).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE, Array

# x_hat(z, t) -> data prediction, t of shape [B].
XPredFn = Callable[[Array, Array], Array]


def alpha_sigma(sde: SDE, t: Array, like: Array) -> tuple[Array, Array]:
  """(alpha_t, sigma_t) of the kernel for per-example times ``t`` [B], broadcast
  against ``like`` [B, ...]."""
  mean, std = sde.marginal(jnp.ones_like(like), t)
  return mean, jnp.broadcast_to(std, like.shape)


def x_from_eps(z: Array, eps_hat: Array, alpha: Array, sigma: Array) -> Array:
  """x_hat = (z - sigma eps_hat) / alpha (the eps-parameterised teacher's reading)."""
  return (z - sigma * eps_hat) / alpha


def x_from_v(z: Array, v_hat: Array, alpha: Array, sigma: Array) -> Array:
  """x_hat = alpha z - sigma v_hat (paper Appendix D; needs alpha^2 + sigma^2 = 1)."""
  return alpha * z - sigma * v_hat


def v_of(x: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """v = alpha eps - sigma x (paper Sec. 4)."""
  return alpha * eps - sigma * x


def ddim_step(sde: SDE, x_pred: XPredFn, z: Array, t: Array, s: Array) -> Array:
  """One deterministic DDIM step z_t -> z_s (paper eq. (5)); t, s per example [B]."""
  a_t, s_t = alpha_sigma(sde, t, z)
  a_s, s_s = alpha_sigma(sde, s, z)
  x_hat = x_pred(z, t)
  return a_s * x_hat + (s_s / s_t) * (z - a_t * x_hat)


def student_times(index: Array, num_steps: Array | int, t_max: float, eps: float
                  ) -> tuple[Array, Array, Array]:
  """(t, t', t'') of Algorithm 2 for the student step ``index`` in 1..N of an N-step
  linear grid from eps to t_max: t = grid point ``index``, t'' the next one down, t'
  the midpoint (the teacher's 2N-step grid point between them)."""
  index = index.astype(jnp.float32)
  n = jnp.asarray(num_steps, jnp.float32)
  width = t_max - eps
  t = eps + width * index / n
  return t, eps + width * (index - 0.5) / n, eps + width * (index - 1.0) / n


def distillation_target(sde: SDE, teacher_x: XPredFn, z: Array, t: Array, t_mid: Array,
                        t_next: Array) -> Array:
  """x_tilde of Algorithm 2: two teacher DDIM steps t -> t' -> t'', then the data
  prediction that makes one DDIM step t -> t'' land on the teacher's z_t''.

  Args:
    sde: a VP process.
    teacher_x: the teacher's data prediction ``x_hat(z, t)``.
    z: z_t ``[B, ...]``.
    t, t_mid, t_next: ``[B]`` times t > t' > t''.

  Returns:
    x_tilde ``[B, ...]`` (no gradient: it is the regression target).
  """
  z_mid = ddim_step(sde, teacher_x, z, t, t_mid)
  z_next = ddim_step(sde, teacher_x, z_mid, t_mid, t_next)
  a_t, s_t = alpha_sigma(sde, t, z)
  a_n, s_n = alpha_sigma(sde, t_next, z)
  ratio = s_n / s_t
  return jax.lax.stop_gradient((z_next - ratio * z) / (a_n - ratio * a_t))


def truncated_snr_weight(alpha: Array, sigma: Array) -> Array:
  """w(lambda_t) = max(exp(lambda_t), 1) = max(alpha^2 / sigma^2, 1) (paper Sec. 4)."""
  return jnp.maximum(jnp.square(alpha) / jnp.square(sigma), 1.0)


def distill_loss(rng: Array, sde: SDE, student_x: XPredFn, teacher_x: XPredFn, x: Array,
                 num_steps: Array | int, eps: float) -> Array:
  """Per-example loss of Algorithm 2 for a student of ``num_steps`` steps.

  i ~ U{1..N}, t = t_i, z_t = alpha_t x + sigma_t eps; the student's x_hat(z_t) is
  regressed on x_tilde with the truncated-SNR weight; squared error averaged over the
  non-batch dimensions.

  Returns:
    ``[B]`` losses.
  """
  rng_i, rng_eps = jax.random.split(rng)
  batch = x.shape[0]
  index = jax.random.randint(rng_i, (batch,), 1, jnp.asarray(num_steps, jnp.int32) + 1)
  t, t_mid, t_next = student_times(index, num_steps, float(sde.T), eps)
  noise = jax.random.normal(rng_eps, x.shape, x.dtype)
  alpha, sigma = alpha_sigma(sde, t, x)
  z = alpha * x + sigma * noise
  target = distillation_target(sde, teacher_x, z, t, t_mid, t_next)
  err = jnp.square(student_x(z, t) - target)
  per_example = jnp.mean(jnp.reshape(err, (batch, -1)), axis=-1)
  weight = truncated_snr_weight(alpha, sigma).reshape(batch, -1)[:, 0]
  return weight * per_example


def score_from_x(sde: SDE, x_pred: XPredFn) -> Callable[[Array, Array], Array]:
  """The score whose Tweedie data prediction is ``x_pred``:
  s(z, t) = -(z - alpha_t x_hat) / sigma_t^2, so ``samplers.ddim`` runs the model."""
  def score(z, t):
    alpha, sigma = alpha_sigma(sde, t, z)
    return -(z - alpha * x_pred(z, t)) / jnp.square(sigma)
  return score


__all__ = ["alpha_sigma", "x_from_eps", "x_from_v", "v_of", "ddim_step", "student_times",
           "distillation_target", "truncated_snr_weight", "distill_loss", "score_from_x"]
