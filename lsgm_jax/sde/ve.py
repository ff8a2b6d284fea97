"""Variance-exploding SDE (NCSN / SMLD in continuous time).

Tutorial, "VE SDE"; Song et al. 2021, eq. (9) with the geometric noise schedule
sigma(t) = sigma_min (sigma_max / sigma_min)^t.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE, Array, batch_broadcast


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """dx = sqrt(d sigma^2 / dt) dw = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw.

  Kernel convention of score_sde: p_t(x | x0) = N(x0, sigma(t)^2 I). Strictly, the SDE
  started at x(0) = x0 gives variance sigma(t)^2 - sigma_min^2; the convention treats
  x(0) as data already blurred by N(0, sigma_min^2), which is negligible for sigma_min
  = 0.01 on [-1, 1] data.

  Attributes:
    sigma_min: sigma(0).
    sigma_max: sigma(1), the prior's std.
  """

  sigma_min: float = 0.01
  sigma_max: float = 50.0

  @property
  def log_ratio(self) -> float:
    """log(sigma_max / sigma_min)."""
    return math.log(self.sigma_max / self.sigma_min)

  def sigma(self, t: Array) -> Array:
    """Geometric schedule sigma(t) = sigma_min (sigma_max / sigma_min)^t (NCSN sigmas)."""
    return self.sigma_min * jnp.exp(t * self.log_ratio)

  def discrete_sigmas(self, num_scales: int) -> Array:
    """The NCSN sequence: ``num_scales`` geometric sigmas from sigma_min up to sigma_max.

    Annealed Langevin dynamics visits them in reverse; sigma_i = sigma(i / (num_scales-1)).
    """
    return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max),
                                num_scales))

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    g = batch_broadcast(self.sigma(t) * math.sqrt(2.0 * self.log_ratio), x)
    return jnp.zeros_like(x), g

  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """p_t(x | x0) = N(x0, sigma(t)^2 I) (Song et al. 2021, eq. (31), score_sde convention)."""
    return x0, batch_broadcast(self.sigma(t), x0)

  def prior_sample(self, rng: Array, shape: tuple[int, ...]) -> Array:
    """N(0, sigma_max^2 I)."""
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z: Array) -> Array:
    dim = math.prod(z.shape[1:])
    sq = jnp.sum(jnp.reshape(jnp.square(z), (z.shape[0], -1)), axis=-1)
    return (-0.5 * dim * math.log(2.0 * math.pi * self.sigma_max**2)
            - 0.5 * sq / self.sigma_max**2)

  def transition_alpha(self, t: Array, dt: float | Array) -> Array:
    """Mean-decay factor of a step: 1 for VE (annealed Langevin's ``alpha``)."""
    del dt
    return jnp.ones_like(t)

  def discretize(self, x: Array, t: Array, dt: float | Array) -> tuple[Array, Array]:
    """SMLD discretisation of the step t - dt -> t: x_t = x_{t-dt} + sqrt(s_t^2 - s_prev^2) z.

    s_prev = sigma(t - dt), or 0 when t - dt <= 0 (the last reverse step then removes all
    noise, as score_sde's ``adjacent_sigma = 0`` at the first index). Song et al. 2021,
    Appendix E, "reverse diffusion" for SMLD.

    Returns:
      (f = 0, G broadcastable against x).
    """
    sigma = self.sigma(t)
    # s_t^2 - s_prev^2 = s_t^2 (1 - e^{-2 dt log r}): no cancellation for small dt.
    var_step = jnp.where(t - dt > 0.0,
                         sigma**2 * -jnp.expm1(-2.0 * dt * self.log_ratio), sigma**2)
    return jnp.zeros_like(x), batch_broadcast(jnp.sqrt(var_step), x)
