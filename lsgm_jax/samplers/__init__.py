"""Samplers: ``sampler(rng, sde, score_fn, shape, **options) -> (samples, info)``.

Every sampler is ``jax.jit``-compiled with ``sde``, ``score_fn``, ``shape`` and its options
static, runs its step loop as one ``lax.scan`` (or one diffrax solve) and reports the
number of score evaluations in ``info["nfe"]``. For CLD, ``shape`` is the data (x) shape
and ``info["v"]`` carries the final velocity.
"""

from __future__ import annotations

from typing import Callable

from lsgm_jax.samplers.annealed_langevin import annealed_langevin
from lsgm_jax.samplers.euler_maruyama import euler_maruyama
from lsgm_jax.samplers.predictor_corrector import predictor_corrector
from lsgm_jax.samplers.probability_flow_ode import probability_flow_ode
from lsgm_jax.samplers.sscs import sscs
from lsgm_jax.samplers.time_grid import STRIDINGS

SAMPLERS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "annealed_langevin": annealed_langevin,
    "probability_flow_ode": probability_flow_ode,
    "sscs": sscs,
}


def get_sampler(name: str) -> Callable:
  """The sampler called ``name``.

  Args:
    name: a key of ``SAMPLERS``.

  Returns:
    The sampler function.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
  return SAMPLERS[name]


__all__ = ["SAMPLERS", "get_sampler", "STRIDINGS", "euler_maruyama",
           "predictor_corrector", "annealed_langevin", "probability_flow_ode", "sscs"]
