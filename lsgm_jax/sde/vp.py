"""Variance-preserving diffusions: VP SDE (DDPM in continuous time) and sub-VP SDE.

Tutorial (score_diffusion_tutorial.txt), "VP SDE" and "sub-VP SDE"; Song et al. 2021,
eqs. (11) and (17), with the linear schedule beta(t) = beta_min + t (beta_max - beta_min).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE, Array, batch_broadcast


def _sum_except_batch(x: Array) -> Array:
  return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def standard_normal_logp(z: Array) -> Array:
  """Log-density of N(0, I) per example.

  Args:
    z: ``[B, ...]``.

  Returns:
    ``[B]`` log-densities, summed over every non-batch dimension.
  """
  dim = math.prod(z.shape[1:])
  return -0.5 * dim * math.log(2.0 * math.pi) - 0.5 * _sum_except_batch(jnp.square(z))


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
  """dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (tutorial, VP SDE; Song et al. 2021 eq. (11)).

  Attributes:
    beta_min: beta(0).
    beta_max: beta(1).
  """

  beta_min: float = 0.1
  beta_max: float = 20.0

  def beta(self, t: Array) -> Array:
    """beta(t) = beta_min + t (beta_max - beta_min), shape of ``t``."""
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def integrated_beta(self, t: Array) -> Array:
    """B(t) = int_0^t beta(s) ds = beta_min t + 1/2 (beta_max - beta_min) t^2."""
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

  def log_mean_coeff(self, t: Array) -> Array:
    """log of the kernel's mean coefficient, -1/2 B(t) (Song et al. 2021, eq. (29))."""
    return -0.5 * self.integrated_beta(t)

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    beta = batch_broadcast(self.beta(t), x)
    return -0.5 * beta * x, jnp.sqrt(beta)

  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """p_t(x | x0) = N(e^{-B/2} x0, (1 - e^{-B}) I) (Song et al. 2021, eq. (29)).

    The variance uses ``-expm1(-B)`` so the std stays accurate in float32 at t ~ 1e-5.
    """
    lmc = batch_broadcast(self.log_mean_coeff(t), x0)
    mean = jnp.exp(lmc) * x0
    std = jnp.sqrt(-jnp.expm1(2.0 * lmc))
    return mean, std

  def prior_sample(self, rng: Array, shape: tuple[int, ...]) -> Array:
    return jax.random.normal(rng, shape)

  def prior_logp(self, z: Array) -> Array:
    return standard_normal_logp(z)

  def transition_alpha(self, t: Array, dt: float | Array) -> Array:
    """alpha = exp(-int_{t-dt}^{t} beta(s) ds), the DDPM 1 - beta_i of the step ending at t.

    This is the exact VP transition x_t = sqrt(alpha) x_{t-dt} + sqrt(1 - alpha) z,
    so DDPM ancestral / reverse-diffusion steps built on it are consistent with
    ``marginal`` for any step size. Also the ``alpha`` of annealed Langevin on VP
    (score_sde's ``sde.alphas[timestep]``). Shape of ``t``.
    """
    return jnp.exp(-self.step_integrated_beta(t, dt))

  def step_integrated_beta(self, t: Array, dt: float | Array) -> Array:
    """int_{t-dt}^{t} beta(s) ds (clipped at s = 0), without subtracting B(t) - B(t-dt).

    = h (beta_min + (beta_max - beta_min) (t - h/2)) with h = min(dt, t): exact for the
    linear schedule and free of the cancellation of two O(10) numbers in float32.
    """
    h = jnp.minimum(dt, t)
    return h * self.beta(t - 0.5 * h)

  def discretize(self, x: Array, t: Array, dt: float | Array) -> tuple[Array, Array]:
    """DDPM discretisation of the step t - dt -> t: x_t = x_{t-dt} + f + G z.

    Args:
      x: state ``[B, ...]``.
      t: end time of the forward step, ``[B]``.
      dt: positive step size (e.g. 1 / num_steps).

    Returns:
      (f, G): f = (sqrt(alpha) - 1) x, G = sqrt(1 - alpha), broadcastable against x
      (Ho et al. 2020 via Song et al. 2021, Appendix E "reverse diffusion").
    """
    log_alpha = batch_broadcast(-self.step_integrated_beta(t, dt), x)
    f = jnp.expm1(0.5 * log_alpha) * x
    g = jnp.sqrt(-jnp.expm1(log_alpha))
    return f, g


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
  """dx = -1/2 beta x dt + sqrt(beta (1 - e^{-2 B(t)})) dw (Song et al. 2021, eq. (17)).

  Same drift as VP, smaller diffusion; the kernel's variance is (1 - e^{-B(t)})^2.
  ``discretize`` is the Euler-Maruyama one (score_sde defines no DDPM analogue);
  ``transition_alpha`` (annealed Langevin's alpha) is inherited from VP.
  """

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    beta = batch_broadcast(self.beta(t), x)
    big_b = batch_broadcast(self.integrated_beta(t), x)
    discount = -jnp.expm1(-2.0 * big_b)
    return -0.5 * beta * x, jnp.sqrt(beta * discount)

  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """p_t(x | x0) = N(e^{-B/2} x0, (1 - e^{-B})^2 I) (Song et al. 2021, eq. (30))."""
    lmc = batch_broadcast(self.log_mean_coeff(t), x0)
    mean = jnp.exp(lmc) * x0
    std = -jnp.expm1(2.0 * lmc)
    return mean, std

  def discretize(self, x: Array, t: Array, dt: float | Array) -> tuple[Array, Array]:
    return SDE.discretize(self, x, t, dt)
