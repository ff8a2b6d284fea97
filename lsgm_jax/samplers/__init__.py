"""Samplers: ``sampler(rng, sde, score_fn, shape, **options) -> (samples, info)``.

Every sampler is ``jax.jit``-compiled with ``sde``, ``score_fn``, ``shape`` and its options
static, runs its step loop as one ``lax.scan`` (or one diffrax solve) and reports the
number of score evaluations in ``info["nfe"]``. For CLD, ``shape`` is the data (x) shape
and ``info["v"]`` carries the final velocity.
"""

from __future__ import annotations

from typing import Any, Callable

from lsgm_jax.samplers.annealed_langevin import annealed_langevin
from lsgm_jax.samplers.ddim import ddim
from lsgm_jax.samplers.dpm_solver import dpm_solver_pp
from lsgm_jax.samplers.euler_maruyama import euler_maruyama
from lsgm_jax.samplers.heun import heun
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
    "ddim": ddim,
    "heun": heun,
    "dpm_solver_pp": dpm_solver_pp,
}


def sampler_options(sampling: Any, eps: float) -> dict[str, Any]:
  """Keyword options of ``sampling.method`` from a ``config.sampling`` section.

  Every method that samples builds its call from here, so each sampler (and each of its
  config fields) is reachable from ``--config.sampling.*``.

  Args:
    sampling: the ``config.sampling`` section.
    eps: the final time of the chain (the family's own, e.g. ``sampling.eps``).

  Returns:
    Keyword arguments for ``get_sampler(sampling.method)`` besides rng/sde/score/shape.
  """
  name = sampling.method
  options: dict[str, Any] = {"eps": float(eps)}
  if name != "heun":  # EDM's chain ends at sigma = 0 by construction
    options["denoise"] = bool(sampling.denoise)
  if name == "annealed_langevin":  # num_steps noise levels (n_steps_each Langevin steps each)
    options["num_levels"] = int(sampling.num_steps)
  elif name != "probability_flow_ode":
    options["num_steps"] = int(sampling.num_steps)
  if name == "ddim":
    options["eta"] = float(sampling.ddim_eta)
  elif name == "heun":
    options.update(rho=float(sampling.heun_rho), s_churn=float(sampling.heun_churn),
                   s_tmin=float(sampling.heun_s_tmin), s_tmax=float(sampling.heun_s_tmax),
                   s_noise=float(sampling.heun_s_noise))
  elif name == "dpm_solver_pp":
    options["schedule"] = str(sampling.dpm_schedule)
    options["order"] = int(sampling.dpm_order)
  elif name == "sscs":
    options["order"] = int(sampling.sscs_order)
  return options


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


__all__ = ["SAMPLERS", "get_sampler", "sampler_options", "STRIDINGS", "euler_maruyama",
           "predictor_corrector", "annealed_langevin", "probability_flow_ode", "sscs",
           "ddim", "heun", "dpm_solver_pp"]
