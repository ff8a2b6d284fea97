"""Score matching for CLD: denoising (DSM) and hybrid (HSM) score matching.

CLD paper (Dockhorn et al. 2022), Sec. 3 "score matching objective": the network learns
only the velocity score grad_v log p_t(u). With u_t = mean + L eps (L the 2x2 Cholesky
factor of the kernel covariance), the kernel's velocity score is -l_t eps_v,
l_t = 1 / L_22 = sqrt(Sigma_xx / det Sigma). The two objectives differ only in the kernel:
  * DSM: v0 ~ N(0, gamma M) is drawn and the kernel conditions on (x0, v0): var0v = 0.
  * HSM: v0 is marginalised analytically: u0 = (x0, 0), var0v = gamma M. Lower variance,
    and the kernel is non-degenerate at t -> 0 (the paper's default).
Weightings (reference ``losses.py``; sums over dimensions, as in the reference):
  * ``"likelihood"``: Gamma beta(t) || s - (-l_t) eps_v ||^2  (lambda = g(t)^2 / 2: the
    maximum-likelihood weighting of the velocity score-matching term),
  * ``"reweightedv1"``: Gamma beta(t) || s / (-l_t) - eps_v ||^2,
  * ``"reweightedv2"``: || s / (-l_t) - eps_v ||^2 (CLD paper's image experiments; the
    noise-prediction loss, analogous to DDPM's L_simple).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from lsgm_jax.objectives.dsm import Reduce, reduce_per_example, sample_time
from lsgm_jax.sde.base import Array, ScoreFn, batch_broadcast
from lsgm_jax.sde.cld import CLD

CLDWeighting = Literal["likelihood", "reweightedv1", "reweightedv2"]


def cld_loss(
    rng: Array,
    cld: CLD,
    score_fn: ScoreFn,
    x0: Array,
    *,
    objective: Literal["hsm", "dsm"] = "hsm",
    weighting: CLDWeighting = "reweightedv2",
    loss_eps: float = 1e-5,
    reduce: Reduce = "sum",
    t: Array | None = None,
) -> Array:
  """Per-example CLD score-matching loss (HSM or DSM), see the module docstring.

  Args:
    rng: PRNG key (split for t, v0 and the kernel noise).
    cld: the CLD process.
    score_fn: velocity score ``score_fn(u_t, t) -> [shape of x0]``, u_t = concat(x, v).
    x0: data ``[B, ..., C]`` (not augmented).
    objective: ``"hsm"`` (marginalise v0) or ``"dsm"`` (sample v0).
    weighting: ``"likelihood"``, ``"reweightedv1"`` or ``"reweightedv2"``.
    loss_eps: t ~ U(loss_eps, 1).
    reduce: ``"sum"`` (default, as the reference) or ``"mean"`` over data dimensions.
    t: optional fixed times ``[B]``.

  Returns:
    ``[B]`` per-example losses.
  """
  rng_t, rng_v, rng_u = jax.random.split(rng, 3)
  if t is None:
    t = sample_time(rng_t, x0.shape[0], loss_eps, cld.T)
  if objective == "dsm":
    u0 = CLD.join(x0, cld.init_velocity(rng_v, x0))
    var0v = 0.0
  elif objective == "hsm":
    u0 = CLD.join(x0, jnp.zeros_like(x0))
    var0v = cld.hsm_var0v
  else:
    raise ValueError(f"objective must be 'hsm' or 'dsm', got {objective!r}")
  u_t, eps, noise_mult = cld.sample_marginal(rng_u, u0, t, 0.0, var0v)
  _, eps_v = CLD.split(eps)
  score = score_fn(u_t, t)
  if weighting == "likelihood":
    # Gamma beta = g(t)^2 / 2 (CLD paper, Sec. 3; reference ``loss_multiplier``).
    weight = batch_broadcast(cld.damping * cld.beta(t), x0)
    sq = weight * jnp.square(score - noise_mult * eps_v)
  elif weighting == "reweightedv1":
    weight = batch_broadcast(cld.damping * cld.beta(t), x0)
    sq = weight * jnp.square(score / noise_mult - eps_v)
  elif weighting == "reweightedv2":
    sq = jnp.square(score / noise_mult - eps_v)
  else:
    raise ValueError(
        f"weighting must be 'likelihood', 'reweightedv1' or 'reweightedv2', got {weighting!r}")
  return reduce_per_example(sq, reduce)


def hsm_loss(rng: Array, cld: CLD, score_fn: ScoreFn, x0: Array, *,
             weighting: CLDWeighting = "reweightedv2", loss_eps: float = 1e-5,
             reduce: Reduce = "sum", t: Array | None = None) -> Array:
  """Hybrid score matching (CLD paper, Sec. 3): ``cld_loss`` with ``objective="hsm"``."""
  return cld_loss(rng, cld, score_fn, x0, objective="hsm", weighting=weighting,
                  loss_eps=loss_eps, reduce=reduce, t=t)


def cld_dsm_loss(rng: Array, cld: CLD, score_fn: ScoreFn, x0: Array, *,
                 weighting: CLDWeighting = "reweightedv2", loss_eps: float = 1e-5,
                 reduce: Reduce = "sum", t: Array | None = None) -> Array:
  """Denoising score matching for CLD (v0 sampled): ``cld_loss`` with ``objective="dsm"``."""
  return cld_loss(rng, cld, score_fn, x0, objective="dsm", weighting=weighting,
                  loss_eps=loss_eps, reduce=reduce, t=t)
