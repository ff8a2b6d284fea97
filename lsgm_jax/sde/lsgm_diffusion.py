"""LSGM's latent diffusions with an initial variance sigma2_0, and their time sampling.

LSGM (Vahdat, Kreis, Kautz, NeurIPS 2021) diffuses the latents z_0 with a linear SDE
dz = f(t) z dt + g(t) dw whose perturbation kernel already has variance sigma2_0 at
t = 0 (LSGM Theorem 1 and its D/2 log(2 pi e sigma2_0) constant assume this):

  q(z_t | z_0) = N(m_t z_0, var(t) I),   m_t = e2int_f(t) = exp(int_0^t f),
  var(t) = m_t^2 (sigma2_0 + int_0^t g^2(s) / m_s^2 ds),   so var(0) = sigma2_0.

Three processes, all frozen (hashable) dataclasses and ``base.SDE``s, so the generic
samplers and the probability-flow likelihood run on them unchanged:

* ``GeometricVPSDE(sigma2_min, sigma2_max, sigma2_0)``: LSGM's new SDE (section
  "variance reduction"): the VP SDE dz = -1/2 beta(t) z dt + sqrt(beta(t)) dw whose
  variance follows a geometric schedule, var(t) = sigma2_min (sigma2_max / sigma2_min)^t
  - sigma2_min + sigma2_0 (with sigma2_0 = sigma2_min this is exactly geometric, and its
  likelihood weighting g^2 / var times the Normal-data denoising error is constant in t).
* ``VPSDEWithInitVar(beta_min, beta_max, sigma2_0)``: the linear-beta VP SDE,
  var(t) = 1 - (1 - sigma2_0) exp(-B(t)), B(t) = int_0^t beta.
* ``VESDEWithInitVar(sigma2_min, sigma2_max, sigma2_0)``: dz = sqrt(d var / dt) dw,
  var(t) = sigma2_min (sigma2_max / sigma2_min)^t - sigma2_min + sigma2_0.

Each exposes ``f``, ``g2``, ``var``, ``e2int_f``, ``inv_var`` (t from var(t)), the mixing
component of the mixed score (the optimal noise prediction for Normal latents), the
cross-entropy constant, and ``iw_quantities``: draws of t with the objective weights of
LSGM's training objectives under uniform or importance sampling (LSGM section "variance
reduction" and its appendix). The numbers here follow NVlabs/LSGM
``diffusion_continuous.py`` except where a comment says otherwise.

Normal reference ("the Normal the SGM only corrects", LSGM "mixed score"): the latent
z_0 ~ N(0, (1 - sigma2_0) I), so that z_0 plus the sigma2_0 start-up noise is N(0, I).
Diffused, z_t ~ N(0, normal_var(t) I) with normal_var(t) = m_t^2 (1 - sigma2_0) + var(t),
which is exactly 1 for every t for the two VP-type SDEs (so the mixing component is the
paper's sigma_t z_t) and var(t) + 1 - sigma2_0 for VE.

Time sampling: every mode below returns weights such that, for any per-t integrand
h(t) (the per-t denoising error), E[weight_p h(t)] = int_{eps}^{1} w_mode(t) h(t) dt and
E[weight_ll h(t)] = int_{eps}^{1} w_ll(t) h(t) dt, with the target weightings

  ll (likelihood, the paper's w_ll):      w(t) = g^2(t) / (2 var(t))
  drop_all (unweighted, the paper's w_un): w(t) = 1
  drop_sigma2t (the paper's w_re):          w(t) = g^2(t) / 2
  rescale:                                  w(t) = 1 / (2 (1 - var(t)))   (VP types only)

``*_uniform`` draws t ~ U(eps, 1); ``*_iw`` draws t from a density proportional to
w(t) times the Normal-data denoising error (zero variance if the latents are exactly the
Normal reference; the derivations sit next to each proposal). One exception, as in the
reference: VE's drop_all_iw reuses the ll_iw proposal. Pairs with the same target, hence the same
expectation, are (ll_iw, ll_uniform), (drop_all_iw, drop_all_uniform) and
(drop_sigma2t_iw, drop_sigma2t_uniform); ``weight_ll`` of every mode targets the
``ll_uniform`` objective (how LSGM reuses the p samples for the VAE's cross entropy).
``rescale_iw`` draws t uniformly (the reference's name, kept for configs).

Deliberate difference from the reference: uniform draws carry the factor (1 - eps) (the
length of the interval), so the uniform and importance-sampled estimators are unbiased for
the same integral over [eps, 1] and the cross entropy is exact for any eps; the reference
omits it (a relative 1 - eps, e.g. 1% at eps = 1e-2, on its uniform modes only).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special

from lsgm_jax.sde.base import SDE, Array, batch_broadcast

IWMode = Literal["ll_uniform", "ll_iw", "drop_all_uniform", "drop_all_iw",
                 "drop_sigma2t_iw", "drop_sigma2t_uniform", "rescale_iw"]

# mode -> (target weighting, importance sampled?)
_MODES: dict[str, tuple[str, bool]] = {
    "ll_uniform": ("ll", False),
    "ll_iw": ("ll", True),
    "drop_all_uniform": ("drop_all", False),
    "drop_all_iw": ("drop_all", True),
    "drop_sigma2t_uniform": ("drop_sigma2t", False),
    "drop_sigma2t_iw": ("drop_sigma2t", True),
    "rescale_iw": ("rescale", False),  # uniform t despite the name (as in the reference)
}
IW_MODES: tuple[str, ...] = tuple(_MODES)

# Importance-sampled mode -> uniform mode with the same expectation.
IW_UNIFORM_PAIRS: dict[str, str] = {
    "ll_iw": "ll_uniform",
    "drop_all_iw": "drop_all_uniform",
    "drop_sigma2t_iw": "drop_sigma2t_uniform",
}


def target_weighting(mode: str) -> str:
  """The weighting a mode's ``weight_p`` targets: "ll", "drop_all", "drop_sigma2t" or "rescale"."""
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {IW_MODES}, got {mode!r}")
  return _MODES[mode][0]


class IWQuantities(NamedTuple):
  """Diffusion quantities at sampled times, all shape ``[B]`` (use ``batch_broadcast``).

  Attributes:
    t: the sampled times in [eps, 1].
    var_t: var(t), the kernel variance.
    m_t: e2int_f(t), the kernel mean coefficient.
    g2_t: g^2(t).
    weight_p: weight on ||eps - eps_theta||^2 for the mode's own objective (the SGM
      prior's loss): E[weight_p h(t)] = int_eps^1 w_mode(t) h(t) dt.
    weight_ll: weight turning the same draws into the likelihood objective (the VAE's
      cross entropy): E[weight_ll h(t)] = int_eps^1 g^2 / (2 var) h(t) dt.
  """

  t: Array
  var_t: Array
  m_t: Array
  g2_t: Array
  weight_p: Array
  weight_ll: Array


def _normal_logp(z: Array, var: float | Array) -> Array:
  """log N(z; 0, var I) per example, ``[B]``."""
  dim = math.prod(z.shape[1:])
  sq = jnp.sum(jnp.reshape(jnp.square(z), (z.shape[0], -1)), axis=-1)
  return -0.5 * dim * jnp.log(2.0 * math.pi * var) - 0.5 * sq / var


def _bisect_increasing(fn: Callable[[Array], Array], target: Array, lo: float, hi: float,
                       iters: int = 40) -> Array:
  """Solves fn(t) = target for an increasing ``fn`` on [lo, hi], elementwise, by bisection."""
  lo_a = jnp.full_like(target, lo)
  hi_a = jnp.full_like(target, hi)

  def body(_, bounds):
    a, b = bounds
    mid = 0.5 * (a + b)
    below = fn(mid) < target
    return jnp.where(below, mid, a), jnp.where(below, b, mid)

  a, b = jax.lax.fori_loop(0, iters, body, (lo_a, hi_a))
  return 0.5 * (a + b)


class LSGMDiffusion(SDE):
  """Shared part of LSGM's diffusions: the SDE interface, mixing component, t sampling.

  Subclasses are frozen dataclasses with a ``sigma2_0`` field and implement ``f``, ``g2``,
  ``var``, ``e2int_f``, ``inv_var``, ``prior_var`` and the importance-sampling proposals
  ``_iw_draw``. All per-time functions take ``t`` of any shape and return that shape.
  """

  sigma2_0: float

  # --- the process -------------------------------------------------------------------
  @abc.abstractmethod
  def f(self, t: Array) -> Array:
    """Drift coefficient f(t) of dz = f(t) z dt + g(t) dw."""

  @abc.abstractmethod
  def g2(self, t: Array) -> Array:
    """Squared diffusion coefficient g^2(t)."""

  @abc.abstractmethod
  def var(self, t: Array) -> Array:
    """Kernel variance var(t) = sigma_t^2, with var(0) = sigma2_0."""

  @abc.abstractmethod
  def e2int_f(self, t: Array) -> Array:
    """Kernel mean coefficient m_t = exp(int_0^t f(s) ds)."""

  @abc.abstractmethod
  def inv_var(self, var: Array) -> Array:
    """The time t with var(t) = ``var`` (var is increasing in t)."""

  @property
  @abc.abstractmethod
  def prior_var(self) -> float:
    """Variance of the Normal prior p_T used for sampling and the likelihood."""

  def normal_var(self, t: Array) -> Array:
    """Variance of z_t when z_0 ~ N(0, (1 - sigma2_0) I): m_t^2 (1 - sigma2_0) + var(t)."""
    return jnp.square(self.e2int_f(t)) * (1.0 - self.sigma2_0) + self.var(t)

  # --- base.SDE ------------------------------------------------------------------------
  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """dz = f(t) z dt + g(t) dw; returns (f(t) z, g(t)) broadcastable against ``x``."""
    return batch_broadcast(self.f(t), x) * x, batch_broadcast(jnp.sqrt(self.g2(t)), x)

  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """q(z_t | z_0) = N(m_t z_0, var(t) I); returns (mean, std), std broadcastable."""
    return batch_broadcast(self.e2int_f(t), x0) * x0, batch_broadcast(jnp.sqrt(self.var(t)), x0)

  def prior_sample(self, rng: Array, shape: tuple[int, ...]) -> Array:
    return jnp.sqrt(self.prior_var) * jax.random.normal(rng, shape)

  def prior_logp(self, z: Array) -> Array:
    return _normal_logp(z, self.prior_var)

  # --- LSGM quantities -----------------------------------------------------------------
  def sample_q(self, z0: Array, noise: Array, var_t: Array, m_t: Array) -> Array:
    """z_t = m_t z_0 + sqrt(var_t) noise (the reference's ``sample_q``).

    Args:
      z0: latents ``[B, ...]``.
      noise: standard normal noise, shape of ``z0``.
      var_t: ``[B]`` kernel variances (``IWQuantities.var_t``).
      m_t: ``[B]`` mean coefficients (``IWQuantities.m_t``).

    Returns:
      ``[B, ...]`` diffused latents.
    """
    return batch_broadcast(m_t, z0) * z0 + batch_broadcast(jnp.sqrt(var_t), z0) * noise

  def mixing_component(self, z_t: Array, t: Array) -> Array:
    """Optimal noise prediction E[eps | z_t] for the Normal reference latents (LSGM "mixed score").

    With z_t ~ N(0, normal_var(t)) the score is -z_t / normal_var(t), and eps = -sqrt(var) *
    score, so the component is sqrt(var(t)) z_t / normal_var(t): sigma_t z_t for the VP
    types (the paper's form), as the reference.

    Args:
      z_t: diffused latents ``[B, ...]``.
      t: times ``[B]``.

    Returns:
      ``[B, ...]`` noise prediction.
    """
    scale = jnp.sqrt(self.var(t)) / self.normal_var(t)
    return batch_broadcast(scale, z_t) * z_t

  def cross_entropy_const(self, time_eps: float) -> Array:
    """Per-dimension constant of the cross entropy: 1/2 log(2 pi e var(eps)).

    LSGM Theorem 1 (cross entropy via denoising score matching) with the diffusion
    started at t = eps, where the kernel variance is var(eps) (sigma2_0 for eps = 0).
    """
    return 0.5 * (1.0 + jnp.log(2.0 * math.pi * self.var(jnp.asarray(time_eps, jnp.float32))))

  def sample_t_uniform(self, rng: Array, batch: int, time_eps: float) -> Array:
    """t ~ U(time_eps, 1), shape ``[batch]``."""
    return jax.random.uniform(rng, (batch,), minval=time_eps, maxval=self.T)

  def objective_weight(self, t: Array, weighting: str) -> Array:
    """Target weighting w(t) of an objective on ||eps - eps_theta||^2 (module docstring).

    Args:
      t: times.
      weighting: ``"ll"``, ``"drop_all"``, ``"drop_sigma2t"`` or ``"rescale"``.

    Returns:
      w(t), shape of ``t``.
    """
    if weighting == "ll":
      return 0.5 * self.g2(t) / self.var(t)
    if weighting == "drop_all":
      return jnp.ones_like(t)
    if weighting == "drop_sigma2t":
      return 0.5 * self.g2(t)
    if weighting == "rescale":
      return 0.5 / self._one_minus_var(t)
    raise ValueError(f"unknown weighting {weighting!r}")

  def _one_minus_var(self, t: Array) -> Array:
    raise ValueError(f"the 1 / (1 - var) rescaling needs var(t) < 1; not defined for "
                     f"{type(self).__name__}")

  @abc.abstractmethod
  def _iw_draw(self, rho: Array, time_eps: float, weighting: str) -> tuple[Array, Array]:
    """Importance-sampled times from uniforms ``rho`` and weight_p = w(t) / p(t)."""

  def iw_quantities(self, rng: Array, batch: int, time_eps: float,
                    mode: str) -> IWQuantities:
    """Draws t for an objective mode and returns the quantities the objectives need.

    Args:
      rng: PRNG key.
      batch: number of draws B.
      time_eps: smallest time eps (the reference's ``time_eps``), 0 <= eps < 1.
      mode: one of ``IW_MODES`` (``iw_sample_p`` / ``iw_sample_q`` in LSGM's configs).

    Returns:
      ``IWQuantities`` of shape ``[B]`` each; see the module docstring for the weights.
    """
    rho = jax.random.uniform(rng, (batch,), jnp.float32)
    return self.iw_quantities_from_uniform(rho, time_eps, mode)

  def iw_quantities_from_uniform(self, rho: Array, time_eps: float,
                                 mode: str) -> IWQuantities:
    """``iw_quantities`` from given uniforms rho in [0, 1) (inverse-CDF sampling of t).

    Lets callers bring their own uniforms (e.g. stratified or shared across devices).

    Args:
      rho: uniforms ``[B]``.
      time_eps: smallest time eps, 0 <= eps < 1.
      mode: one of ``IW_MODES``.

    Returns:
      ``IWQuantities`` of shape ``[B]`` each.
    """
    if mode not in _MODES:
      raise ValueError(f"mode must be one of {IW_MODES}, got {mode!r}")
    if not 0.0 <= time_eps < self.T:
      raise ValueError(f"time_eps must be in [0, {self.T}), got {time_eps}")
    weighting, importance = _MODES[mode]
    rho = jnp.asarray(rho, jnp.float32)
    if importance:
      t, weight_p = self._iw_draw(rho, time_eps, weighting)
    else:
      t = time_eps + (self.T - time_eps) * rho
      weight_p = (self.T - time_eps) * self.objective_weight(t, weighting)
    var_t, m_t, g2_t = self.var(t), self.e2int_f(t), self.g2(t)
    if weighting == "ll":
      weight_ll = weight_p
    else:
      # Same draws, likelihood target: multiply by w_ll / w_mode (the reference's
      # obj_weight_t_ll).
      weight_ll = weight_p * self.objective_weight(t, "ll") / self.objective_weight(t, weighting)
    return IWQuantities(t, var_t, m_t, g2_t, weight_p, weight_ll)

  def _check_log_var(self, time_eps: float) -> None:
    if self.sigma2_0 == 0.0 and time_eps == 0.0:
      raise ValueError("importance sampling in log var(t) needs var(eps) > 0: set "
                       "time_eps > 0 or sigma2_0 > 0")


class _VPType(LSGMDiffusion):
  """dz = -1/2 beta(t) z dt + sqrt(beta(t)) dw with var(0) = sigma2_0 (VP and geometric).

  For these, 1 - var(t) = (1 - sigma2_0) m_t^2 and d var / dt = beta (1 - var), so
  g^2 = beta = var' / (1 - var), and normal_var = 1: the Normal reference stays N(0, I).
  The Normal-data denoising error E||eps - E[eps | z_t]||^2 per dimension is 1 - var(t),
  which is what the proposals below are proportional to, times the target weighting.
  """

  def f(self, t: Array) -> Array:
    return -0.5 * self.g2(t)

  def normal_var(self, t: Array) -> Array:
    return jnp.ones_like(t)

  @property
  def prior_var(self) -> float:
    return 1.0

  def _one_minus_var(self, t: Array) -> Array:
    return (1.0 - self.sigma2_0) * jnp.square(self.e2int_f(t))

  def _iw_draw(self, rho: Array, time_eps: float, weighting: str) -> tuple[Array, Array]:
    eps = jnp.asarray(time_eps, jnp.float32)
    if weighting == "ll":
      # p(t) ∝ g^2 / (2 var) (1 - var) = var' / (2 var): log var(t) uniform between
      # log var(eps) and log var(1); weight = w / p = (log var1 - log var_eps) / (2 (1 - var)).
      self._check_log_var(time_eps)
      log_v0, log_v1 = jnp.log(self.var(eps)), jnp.log(self.var(jnp.ones_like(eps)))
      t = self.inv_var(jnp.exp(log_v0 + rho * (log_v1 - log_v0)))
      return t, 0.5 * (log_v1 - log_v0) / self._one_minus_var(t)
    if weighting == "drop_sigma2t":
      # p(t) ∝ g^2 / 2 (1 - var) = var' / 2: var(t) uniform between var(eps) and var(1);
      # weight = (var1 - var_eps) / (2 (1 - var)).
      v0, v1 = self.var(eps), self.var(jnp.ones_like(eps))
      t = self.inv_var(v0 + rho * (v1 - v0))
      return t, 0.5 * (v1 - v0) / self._one_minus_var(t)
    if weighting == "drop_all":
      # p(t) ∝ 1 - var(t); inverse CDF per SDE (``_drop_all_draw``).
      return self._drop_all_draw(rho, time_eps)
    raise ValueError(f"no importance sampling for weighting {weighting!r}")

  @abc.abstractmethod
  def _drop_all_draw(self, rho: Array, time_eps: float) -> tuple[Array, Array]:
    """t from p(t) ∝ 1 - var(t) on [eps, 1] and weight 1 / p(t)."""


@dataclasses.dataclass(frozen=True)
class GeometricVPSDE(_VPType):
  """LSGM's geometric VP SDE: var(t) = sigma2_min r^t - sigma2_min + sigma2_0, r = max / min.

  With sigma2_0 = sigma2_min the variance runs geometrically from sigma2_min to sigma2_max
  (LSGM "variance reduction": the likelihood-weighted Normal-data integrand is then
  constant in t). Defaults are the reference's (sigma2_min 1e-4, sigma2_max 0.99,
  sigma2_0 0).

  Attributes:
    sigma2_min: sigma^2_min > 0.
    sigma2_max: sigma^2_max > sigma2_min; var(1) = sigma2_max - sigma2_min + sigma2_0 < 1.
    sigma2_0: initial variance var(0) >= 0.
  """

  sigma2_min: float = 1e-4
  sigma2_max: float = 0.99
  sigma2_0: float = 0.0

  def __post_init__(self):
    if not 0.0 < self.sigma2_min < self.sigma2_max:
      raise ValueError(f"need 0 < sigma2_min < sigma2_max, got {self.sigma2_min}, "
                       f"{self.sigma2_max}")
    if not 0.0 <= self.sigma2_0 or self.sigma2_max - self.sigma2_min + self.sigma2_0 >= 1.0:
      raise ValueError(f"need sigma2_0 >= 0 and var(1) = sigma2_max - sigma2_min + sigma2_0 "
                       f"< 1, got sigma2_0={self.sigma2_0}")

  @property
  def _log_ratio(self) -> float:
    return math.log(self.sigma2_max / self.sigma2_min)

  def var(self, t: Array) -> Array:
    return self.sigma2_min * jnp.expm1(t * self._log_ratio) + self.sigma2_0

  def g2(self, t: Array) -> Array:
    # beta = var' / (1 - var), var' = sigma2_min log(r) r^t.
    return self.sigma2_min * self._log_ratio * jnp.exp(t * self._log_ratio) / (1.0 - self.var(t))

  def e2int_f(self, t: Array) -> Array:
    # m_t^2 = (1 - var) / (1 - sigma2_0).
    return jnp.sqrt((1.0 - self.var(t)) / (1.0 - self.sigma2_0))

  def inv_var(self, var: Array) -> Array:
    return jnp.log1p((var - self.sigma2_0) / self.sigma2_min) / self._log_ratio

  def _drop_all_draw(self, rho: Array, time_eps: float) -> tuple[Array, Array]:
    # The reference has no drop_all_iw for this SDE. int (1 - var) dt has the closed form
    # C(t) = a t - sigma2_min (r^t - 1) / log r, a = 1 - sigma2_0 + sigma2_min, but its
    # inverse does not, so C(t) = C(eps) + rho (C(1) - C(eps)) is solved by bisection
    # (C is increasing because 1 - var > 0).
    a = 1.0 - self.sigma2_0 + self.sigma2_min
    cdf = lambda s: a * s - self.sigma2_min * jnp.expm1(s * self._log_ratio) / self._log_ratio
    c_eps, c_1 = cdf(jnp.float32(time_eps)), cdf(jnp.float32(1.0))
    t = _bisect_increasing(cdf, c_eps + rho * (c_1 - c_eps), time_eps, 1.0)
    return t, (c_1 - c_eps) / (1.0 - self.var(t))


@dataclasses.dataclass(frozen=True)
class VPSDEWithInitVar(_VPType):
  """The VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min) and var(0) = sigma2_0.

  var(t) = 1 - (1 - sigma2_0) exp(-B(t)), m_t = exp(-B(t) / 2), B(t) = int_0^t beta.
  With sigma2_0 = 0 it is score_sde's VP SDE (``sde.vp.VPSDE``).

  Attributes:
    beta_min: beta(0) > 0.
    beta_max: beta(1) >= beta_min.
    sigma2_0: initial variance var(0) in [0, 1).
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  sigma2_0: float = 0.0

  def __post_init__(self):
    if not 0.0 < self.beta_min <= self.beta_max:
      raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
    if not 0.0 <= self.sigma2_0 < 1.0:
      raise ValueError(f"need 0 <= sigma2_0 < 1, got {self.sigma2_0}")

  def integrated_beta(self, t: Array) -> Array:
    """B(t) = beta_min t + 1/2 (beta_max - beta_min) t^2."""
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * jnp.square(t)

  def g2(self, t: Array) -> Array:
    return self.beta_min + (self.beta_max - self.beta_min) * t

  def var(self, t: Array) -> Array:
    # (1 - sigma2_0)(1 - e^{-B}) + sigma2_0, with expm1 for small t.
    return -(1.0 - self.sigma2_0) * jnp.expm1(-self.integrated_beta(t)) + self.sigma2_0

  def e2int_f(self, t: Array) -> Array:
    return jnp.exp(-0.5 * self.integrated_beta(t))

  def inv_var(self, var: Array) -> Array:
    # B = log(1 - sigma2_0) - log(1 - var); solve 1/2 d t^2 + beta_min t - B = 0 in the
    # cancellation-free form t = 2 B / (beta_min + sqrt(beta_min^2 + 2 d B)) (d may be 0).
    big_b = math.log1p(-self.sigma2_0) - jnp.log1p(-var)
    d = self.beta_max - self.beta_min
    return 2.0 * big_b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * big_b))

  def _drop_all_draw(self, rho: Array, time_eps: float) -> tuple[Array, Array]:
    # p(t) ∝ 1 - var = (1 - sigma2_0) e^{-B(t)}. With d = beta_max - beta_min > 0,
    # B(t) = d/2 (t + b)^2 - beta_min^2 / (2 d), b = beta_min / d, so with k = sqrt(d / 2)
    # int_eps^t e^{-B} = e^{beta_min^2 / (2d)} sqrt(pi) / (2k)
    #                    * [erfc(k (eps + b)) - erfc(k (t + b))].
    # The inverse CDF uses erfc^{-1}(y) = -ndtri(y / 2) / sqrt(2), accurate in the tail.
    # (The reference's normaliser carries exp(b / 2) for exp(beta_min^2 / (2 d)), a constant
    # factor on the weights; here the weights are exactly 1 / p(t).)
    eps = jnp.float32(time_eps)
    d = self.beta_max - self.beta_min
    if d == 0.0:
      # Constant beta: p(t) ∝ e^{-beta t}, inverse CDF in closed form.
      beta = self.beta_min
      e0, e1 = jnp.exp(-beta * eps), math.exp(-beta)
      t = -jnp.log(e0 - rho * (e0 - e1)) / beta
      return t, (e0 - e1) / beta * jnp.exp(beta * t)
    k, b = math.sqrt(0.5 * d), self.beta_min / d
    y0, y1 = special.erfc(k * (eps + b)), special.erfc(k * (1.0 + b))
    y = y0 - rho * (y0 - y1)
    t = -special.ndtri(0.5 * y) / (math.sqrt(2.0) * k) - b
    t = jnp.clip(t, time_eps, 1.0)
    # weight = Z / e^{-B(t)} (the (1 - sigma2_0) of p's numerator and Z cancel).
    z_norm = math.exp(0.5 * self.beta_min * b) * math.sqrt(math.pi) / (2.0 * k) * (y0 - y1)
    return t, z_norm * jnp.exp(self.integrated_beta(t))


@dataclasses.dataclass(frozen=True)
class VESDEWithInitVar(LSGMDiffusion):
  """VE SDE dz = sqrt(var'(t)) dw with var(t) = sigma2_min r^t - sigma2_min + sigma2_0.

  f = 0, m_t = 1, g^2 = sigma2_min log(r) r^t. The reference requires sigma2_0 =
  sigma2_min (then var runs geometrically from sigma2_min to sigma2_max); any sigma2_0 >= 0
  works here. In LSGM sigma2_max is set to the largest squared pairwise distance between
  latents; the default is a placeholder. The prior is N(0, var(1) I) (= N(0, sigma2_max)
  when sigma2_0 = sigma2_min, the reference's).

  The Normal reference is z_t ~ N(0, var(t) + c), c = 1 - sigma2_0, whose denoising
  error per dimension is c / (var + c); the proposals below are proportional to that
  times the target weighting. ``rescale_iw`` is not defined (var(t) exceeds 1).

  Attributes:
    sigma2_min: sigma^2_min > 0.
    sigma2_max: sigma^2_max > sigma2_min.
    sigma2_0: initial variance var(0) in [0, 1).
  """

  sigma2_min: float = 1e-4
  sigma2_max: float = 2500.0
  sigma2_0: float = 1e-4

  def __post_init__(self):
    if not 0.0 < self.sigma2_min < self.sigma2_max:
      raise ValueError(f"need 0 < sigma2_min < sigma2_max, got {self.sigma2_min}, "
                       f"{self.sigma2_max}")
    if not 0.0 <= self.sigma2_0 < 1.0:
      raise ValueError(f"need 0 <= sigma2_0 < 1, got {self.sigma2_0}")

  @property
  def _log_ratio(self) -> float:
    return math.log(self.sigma2_max / self.sigma2_min)

  @property
  def prior_var(self) -> float:
    return self.sigma2_max - self.sigma2_min + self.sigma2_0

  def f(self, t: Array) -> Array:
    return jnp.zeros_like(t)

  def g2(self, t: Array) -> Array:
    return self.sigma2_min * self._log_ratio * jnp.exp(t * self._log_ratio)

  def var(self, t: Array) -> Array:
    return self.sigma2_min * jnp.expm1(t * self._log_ratio) + self.sigma2_0

  def e2int_f(self, t: Array) -> Array:
    return jnp.ones_like(t)

  def inv_var(self, var: Array) -> Array:
    return jnp.log1p((var - self.sigma2_0) / self.sigma2_min) / self._log_ratio

  def normal_var(self, t: Array) -> Array:
    return self.var(t) + (1.0 - self.sigma2_0)

  def _iw_draw(self, rho: Array, time_eps: float, weighting: str) -> tuple[Array, Array]:
    eps = jnp.asarray(time_eps, jnp.float32)
    one = jnp.ones_like(eps)
    c = 1.0 - self.sigma2_0
    if weighting in ("ll", "drop_all"):
      # ll: p(t) ∝ g^2 / (2 var) * c / (var + c). With u(t) = log(var / (var + c)),
      # u' = g^2 c / (var (var + c)), so u is uniform between u(eps) and u(1) and
      # w_ll / p = (u1 - u_eps) (var + c) / (2 c). drop_all reuses this proposal
      # (as the reference) with weight 1 / p = (u1 - u_eps) var (var + c) / (g^2 c).
      self._check_log_var(time_eps)
      u = lambda v: jnp.log(v) - jnp.log(v + c)
      u0, u1 = u(self.var(eps)), u(self.var(one))
      # var / (var + c) = e^u  =>  var = c / (e^{-u} - 1).
      t = self.inv_var(c / jnp.expm1(-(u0 + rho * (u1 - u0))))
      var_t = self.var(t)
      weight_ll = 0.5 * (u1 - u0) * (var_t + c) / c
      if weighting == "ll":
        return t, weight_ll
      return t, weight_ll * 2.0 * var_t / self.g2(t)
    if weighting == "drop_sigma2t":
      # p(t) ∝ g^2 / 2 * c / (var + c): log(var + c) uniform; weight = (U1 - U_eps) (var + c) / 2.
      big_u0, big_u1 = jnp.log(self.var(eps) + c), jnp.log(self.var(one) + c)
      t = self.inv_var(jnp.exp(big_u0 + rho * (big_u1 - big_u0)) - c)
      return t, 0.5 * (big_u1 - big_u0) * (self.var(t) + c)
    raise ValueError(f"no importance sampling for weighting {weighting!r} on the VE SDE")
