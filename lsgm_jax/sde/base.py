"""The diffusion-process interface every sampler, objective and likelihood builds on.

In the spirit of score_sde's ``sde_lib.SDE``: a process is a frozen (hashable) dataclass
holding only floats, so it can be closed over by ``jax.jit``-compiled functions and used
as a static argument. Time runs forward from data (t=0) to the prior (t=1 = ``T``).

Shapes: ``x`` is ``[B, ...]`` (NHWC images or ``[B, D]`` vectors) and ``t`` is ``[B]``.
Anything scalar-per-example that must multiply ``x`` is returned already broadcastable
against ``x`` (shape ``[B, 1, ..., 1]``), so samplers never reshape.
"""

from __future__ import annotations

import abc
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_broadcast(v: Array, x: Array) -> Array:
  """Reshapes a per-example ``[B]`` array so it broadcasts against ``x`` ``[B, ...]``."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


class SDE(abc.ABC):
  """A forward diffusion dx = f(x, t) dt + G(t) dw on t in [0, T] (tutorial eq. for the SDE)."""

  T: float = 1.0

  @abc.abstractmethod
  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Forward drift f(x, t) (shape of x) and diffusion G(t) (broadcastable against x)."""

  @abc.abstractmethod
  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """Mean and std of the perturbation kernel p_t(x | x0); std broadcastable against x0."""

  def sample_marginal(self, rng: Array, x0: Array, t: Array) -> tuple[Array, Array, Array]:
    """Draws x_t ~ p_t(. | x0). Returns (x_t, noise, std) with x_t = mean + std * noise."""
    mean, std = self.marginal(x0, t)
    noise = jax.random.normal(rng, x0.shape, x0.dtype)
    return mean + std * noise, noise, std

  @abc.abstractmethod
  def prior_sample(self, rng: Array, shape: tuple[int, ...]) -> Array:
    """Draws from the prior p_T."""

  @abc.abstractmethod
  def prior_logp(self, z: Array) -> Array:
    """Log-density of the prior p_T, one value per example (shape [B])."""

  def discretize(self, x: Array, t: Array, dt: float | Array) -> tuple[Array, Array]:
    """One forward step t - dt -> t as x_t = x_{t-dt} + f + G z, z ~ N(0, I).

    Default: Euler-Maruyama, f = drift * dt, G = diffusion * sqrt(dt). VP and VE override
    it with the DDPM / SMLD discretisations (score_sde's ``SDE.discretize``). ``dt > 0``.
    """
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn``."""
    return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
  """Reverse-time process dx = [f - G G^T score] dt + G dw-bar (tutorial, reverse SDE).

  With ``probability_flow=True`` it is the ODE dx = [f - 1/2 G G^T score] dt, with no
  noise. Integrated from t = T down to a small eps; drift is returned for dt > 0 in
  *forward* time, i.e. samplers step ``x <- x - drift * dt + diffusion * sqrt(dt) * z``.
  """

  def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    weight = 0.5 if self.probability_flow else 1.0
    drift = drift - weight * diffusion**2 * score
    diffusion = jnp.zeros_like(diffusion) if self.probability_flow else diffusion
    return drift, diffusion

  def discretize(self, x: Array, t: Array, dt: float | Array) -> tuple[Array, Array]:
    """Reverse of ``forward.discretize``: a step t -> t - dt is x <- x - f + G z.

    f = f_fwd - w G^2 score (w = 1/2 for the probability flow, G then 0), as in
    score_sde's reverse-diffusion predictor.
    """
    f, g = self.forward.discretize(x, t, dt)
    score = self.score_fn(x, t)
    weight = 0.5 if self.probability_flow else 1.0
    f = f - weight * g**2 * score
    g = jnp.zeros_like(g) if self.probability_flow else g
    return f, g
