"""Critically-damped Langevin diffusion (CLD) on the augmented state u = (x, v).

CLD paper (Dockhorn, Vahdat, Kreis 2022, "Score-Based Generative Modeling with
Critically-Damped Langevin Diffusion"), Sec. 3, forward SDE:

  dx = M^{-1} v beta(t) dt
  dv = (-x - Gamma M^{-1} v) beta(t) dt + sqrt(2 Gamma beta(t)) dw,

with critical damping Gamma^2 = 4 M, prior N(0, I) x N(0, M I) and beta(t) = beta0 + beta1 t.
u is x and v concatenated on the LAST (channel) axis: [B, D] -> [B, 2D], NHWC
[B, H, W, C] -> [B, H, W, 2C]. Score networks predict only the velocity score
grad_v log p_t(u) (shape of v).

Perturbation kernel (CLD paper, appendix on the perturbation kernel; derived here anew in
float32-stable form). With B = int_0^t beta, a = 2 / Gamma, y = 2 a B = 4 B / Gamma:

  exp(B A) = e^{-y/2} [[1 + y/2, y/Gamma], [-B, 1 - y/2]]      (A: the drift matrix / beta)
  mean     = exp(B A) u0
  Sigma_t  = exp(B A) diag(var0x, var0v) exp(B A)^T + Q(y)
  Q_xx = P(3, y),  Q_xv = Gamma y^2 e^{-y} / 4,  Q_vv = M (2 P(1, y) - 2 P(2, y) + P(3, y))

where P(k, y) is the regularised lower incomplete gamma function, evaluated by its power
series for small y so that nothing cancels as t -> 0 (the reference's closed form
``e^{4B/Gamma} - 1 - 4B/Gamma - ...`` loses every digit in float32 there; CLD-SGM issue 6).
The determinant is also formed without subtraction of nearly equal terms:

  det Sigma_t = e^{-2y} var0x var0v + det Q + var0x K_x + var0v K_v,
  K_x = M/2 e^{-y} (c^2 P(1,y) - 2 c P(2,y) + 2 P(3,y)),  c = 2 + y,
  K_v = e^{-y} R_3(y),  R_3(y) = 1 - y + y^2/2 - e^{-y},

(det(P+Q) = det P + det Q + tr(adj(P) Q) for 2x2 matrices; K_x, K_v are the quadratic
forms of Q in the adjugate directions of the two columns of exp(B A)).
As in the reference, ``numerical_eps`` is added to Sigma_xx and Sigma_vv.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import SDE, Array, ReverseSDE, ScoreFn, batch_broadcast

Cov2 = tuple[Array, Array, Array]  # (sigma_xx, sigma_xv, sigma_vv)

_SERIES_CUT = 2.0   # y below this uses power series
_SERIES_TERMS = 20  # truncation error < 2^20 / 23! ~ 4e-17 relative to the leading term
# Column 0: 1 / (j + 3)!;  column 1: (-1)^j / (j + 3)!.
_TAIL_COEFFS = tuple((1.0 / math.factorial(j + 3), (-1.0)**j / math.factorial(j + 3))
                     for j in range(_SERIES_TERMS))


def _kernel_special(y: Array) -> tuple[Array, Array, Array, Array, Array]:
  """(e^{-y}, P(1,y), P(2,y), P(3,y), R_3(y)) for y >= 0, all without cancellation.

  P(k, y) = e^{-y} sum_{n >= k} y^n / n! is the regularised lower incomplete gamma
  function and R_3(y) = 1 - y + y^2/2 - e^{-y} = sum_{n >= 3} (-1)^{n+1} y^n / n!.
  For y < 2 both tails are power series (terms of one sign for P; for R_3 the terms
  shrink from the first); above, 1 - e^{-y} e_{k-1}(y) is benign since P(3, 2) = 0.32.
  The series is one vectorised polynomial so that eager callers compile few ops.
  """
  e = jnp.exp(-y)
  ys = jnp.minimum(y, _SERIES_CUT)
  powers = ys[..., None] ** jnp.arange(_SERIES_TERMS, dtype=y.dtype)
  tails = (ys**3)[..., None] * (powers @ jnp.asarray(_TAIL_COEFFS, y.dtype))
  tail3, r3_series = tails[..., 0], tails[..., 1]  # sum_{n>=3} y^n/n!, R_3(y)
  small = y < _SERIES_CUT
  p1 = -jnp.expm1(-y)
  p2 = jnp.where(small, jnp.exp(-ys) * (0.5 * ys**2 + tail3), 1.0 - e * (1.0 + y))
  p3 = jnp.where(small, jnp.exp(-ys) * tail3, 1.0 - e * (1.0 + y + 0.5 * y**2))
  r3 = jnp.where(small, r3_series, 1.0 - y + 0.5 * y**2 - e)
  return e, p1, p2, p3, r3


def cholesky_2x2(cov: Cov2, det: Array | None = None) -> Cov2:
  """Cholesky factor (l11, l21, l22) of [[sxx, sxv], [sxv, svv]].

  l22 = sqrt(det / sxx) uses a directly computed determinant when given, instead of the
  cancelling sqrt(svv - l21^2).
  """
  sxx, sxv, svv = cov
  if det is None:
    det = sxx * svv - sxv**2
  l11 = jnp.sqrt(sxx)
  return l11, sxv / l11, jnp.sqrt(det / sxx)


@dataclasses.dataclass(frozen=True, init=False)
class CLD(SDE):
  """Critically-damped Langevin diffusion (CLD paper, Sec. 3) on u = concat(x, v, axis=-1).

  Attributes:
    beta0: beta(0); beta(t) = beta0 + beta1 t. ``CLD(beta=4.0)`` is the paper's constant 4.
    beta1: slope of beta (0 in every paper config).
    m_inv: M^{-1}, inverse mass (4 in the paper). Gamma = 2 sqrt(M) (critical damping).
    gamma: initial velocity variance factor: v0 ~ N(0, gamma M I) (0.04 in the paper).
    numerical_eps: added to Sigma_xx and Sigma_vv of the kernel (1e-9 CIFAR-10, 1e-6 toy).
  """

  beta0: float = 4.0
  beta1: float = 0.0
  m_inv: float = 4.0
  gamma: float = 0.04
  numerical_eps: float = 1e-9

  def __init__(self, beta0: float = 4.0, beta1: float = 0.0, m_inv: float = 4.0,
               gamma: float = 0.04, numerical_eps: float = 1e-9, *,
               beta: float | None = None):
    if beta is not None:
      beta0, beta1 = beta, 0.0
    for name, value in (("beta0", beta0), ("beta1", beta1), ("m_inv", m_inv),
                        ("gamma", gamma), ("numerical_eps", numerical_eps)):
      object.__setattr__(self, name, float(value))
    if self.m_inv <= 0 or self.beta0 <= 0 or self.beta0 + self.beta1 <= 0:
      raise ValueError(f"CLD needs m_inv > 0 and beta(t) > 0 on [0, 1], got {self}")

  # --- constants ---------------------------------------------------------------------
  @property
  def mass(self) -> float:
    """M = 1 / m_inv."""
    return 1.0 / self.m_inv

  @property
  def damping(self) -> float:
    """Gamma = 2 sqrt(M): critical damping, Gamma^2 = 4 M (CLD paper, Sec. 3)."""
    return 2.0 / math.sqrt(self.m_inv)

  @property
  def hsm_var0v(self) -> float:
    """Initial velocity variance gamma M marginalised by HSM (reference: gamma / m_inv)."""
    return self.gamma / self.m_inv

  @staticmethod
  def split(u: Array) -> tuple[Array, Array]:
    """(x, v) from u on the last axis."""
    return jnp.split(u, 2, axis=-1)

  @staticmethod
  def join(x: Array, v: Array) -> Array:
    """u = concat(x, v) on the last axis."""
    return jnp.concatenate([x, v], axis=-1)

  def beta(self, t: Array) -> Array:
    """beta(t) = beta0 + beta1 t."""
    return self.beta0 + self.beta1 * t

  def integrated_beta(self, t: Array) -> Array:
    """B(t) = int_0^t beta = beta0 t + beta1 t^2 / 2."""
    return self.beta0 * t + 0.5 * self.beta1 * t**2

  # --- forward process ---------------------------------------------------------------
  def sde(self, u: Array, t: Array) -> tuple[Array, Array]:
    """Drift and diffusion (CLD paper, Sec. 3). Diffusion is 0 on x, sqrt(2 Gamma beta) on v.

    Returns:
      (drift [shape u], diffusion [shape u]).
    """
    x, v = self.split(u)
    beta = batch_broadcast(self.beta(t), x)
    drift_x = self.m_inv * beta * v
    drift_v = -beta * x - self.damping * self.m_inv * beta * v
    g_v = jnp.broadcast_to(jnp.sqrt(2.0 * self.damping * beta), v.shape).astype(v.dtype)
    return self.join(drift_x, drift_v), self.join(jnp.zeros_like(x), g_v)

  def diffusion_v(self, t: Array) -> Array:
    """g(t) = sqrt(2 Gamma beta(t)), the velocity diffusion, shape of t."""
    return jnp.sqrt(2.0 * self.damping * self.beta(t))

  def _mean_map(self, x: Array, v: Array, big_b: Array) -> tuple[Array, Array]:
    """exp(B A) (x, v) for an integrated-beta B broadcastable against x (any sign)."""
    y = 4.0 * big_b / self.damping
    decay = jnp.exp(-0.5 * y)
    mean_x = decay * ((1.0 + 0.5 * y) * x + (y / self.damping) * v)
    mean_v = decay * (-big_b * x + (1.0 - 0.5 * y) * v)
    return mean_x, mean_v

  def mean(self, u0: Array, t: Array) -> Array:
    """Kernel mean exp(B(t) A) u0 (CLD paper, perturbation-kernel appendix)."""
    x, v = self.split(u0)
    mean_x, mean_v = self._mean_map(x, v, batch_broadcast(self.integrated_beta(t), x))
    return self.join(mean_x, mean_v)

  def _cov_from_b(self, big_b: Array, var0x: Array | float, var0v: Array | float,
                  eps: float) -> tuple[Cov2, Array]:
    """Sigma = exp(BA) diag(var0x, var0v) exp(BA)^T + Q(B) and its determinant, B >= 0."""
    # One compiled program (eager callers would otherwise compile ~50 ops per new shape).
    return _cov_from_b_jit(self, big_b, var0x, var0v, eps)

  def _cov_from_b_impl(self, big_b: Array, var0x: Array | float, var0v: Array | float,
                       eps: float) -> tuple[Cov2, Array]:
    gam, mass = self.damping, self.mass
    y = 4.0 * big_b / gam
    e, p1, p2, p3, r3 = _kernel_special(jnp.asarray(y))
    q_xx = p3
    q_xv = 0.25 * gam * y**2 * e
    q_vv = mass * (2.0 * p1 - 2.0 * p2 + p3)
    h = 0.5 * y
    phi_xx, phi_xv, phi_vx, phi_vv = 1.0 + h, y / gam, -big_b, 1.0 - h  # exp(BA) e^{y/2}
    sxx = e * (phi_xx**2 * var0x + phi_xv**2 * var0v) + q_xx
    sxv = e * (phi_xx * phi_vx * var0x + phi_xv * phi_vv * var0v) + q_xv
    svv = e * (phi_vx**2 * var0x + phi_vv**2 * var0v) + q_vv
    c = 2.0 + y
    k_x = 0.5 * mass * e * (c**2 * p1 - 2.0 * c * p2 + 2.0 * p3)
    k_v = e * r3
    det_q = q_xx * q_vv - q_xv**2  # leading terms differ by a factor 4/3: benign
    det = e**2 * var0x * var0v + det_q + var0x * k_x + var0v * k_v
    # numerical_eps on the diagonal, as the reference; the determinant follows exactly.
    det = det + eps * (sxx + svv) + eps**2
    return (sxx + eps, sxv, svv + eps), det

  def marginal_cov(self, t: Array, var0x: Array | float = 0.0,
                   var0v: Array | float | None = None) -> tuple[Cov2, Array]:
    """Kernel covariance of u_t given u_0 = mean with initial variances, and its determinant.

    Args:
      t: times ``[B]`` (or anything broadcastable against ``var0x``/``var0v``).
      var0x: initial variance of x (0 for a data point).
      var0v: initial variance of v: 0 (DSM, v0 drawn; the default) or ``hsm_var0v``
        (HSM, v0 marginalised).

    Returns:
      ((sigma_xx, sigma_xv, sigma_vv), det), each of shape of t (numerical_eps included).
    """
    var0v = 0.0 if var0v is None else var0v
    return self._cov_from_b(self.integrated_beta(t), var0x, var0v, self.numerical_eps)

  def marginal(self, u0: Array, t: Array, var0x: Array | float = 0.0,
               var0v: Array | float | None = None) -> tuple[Array, Cov2]:
    """Mean and 2x2 covariance of p_t(u | u0) (same covariance for every dimension).

    Returns:
      (mean [shape u0], (sxx, sxv, svv) each [B, 1, ..., 1]).
    """
    (sxx, sxv, svv), _ = self.marginal_cov(t, var0x, var0v)
    bc = lambda a: batch_broadcast(a, u0)
    return self.mean(u0, t), (bc(sxx), bc(sxv), bc(svv))

  def noise_multiplier(self, t: Array, var0x: Array | float = 0.0,
                       var0v: Array | float | None = None) -> Array:
    """-l_t with l_t = sqrt(Sxx / det) = 1 / L22: the kernel's velocity score is -l_t eps_v.

    CLD paper, Sec. 3 (HSM); reference ``noise_multiplier``. Shape of t.
    """
    (sxx, _, _), det = self.marginal_cov(t, var0x, var0v)
    return -jnp.sqrt(sxx / det)

  def sample_marginal(self, rng: Array, u0: Array, t: Array, var0x: Array | float = 0.0,
                      var0v: Array | float | None = None) -> tuple[Array, Array, Array]:
    """Draws u_t = mean + L eps with L the 2x2 Cholesky factor of the kernel covariance.

    Returns:
      (u_t, eps [shape u0, standard normal], noise_multiplier -l_t [B, 1, ..., 1]).
      The velocity score of the kernel at u_t is ``noise_multiplier * eps_v``.
    """
    (sxx, sxv, svv), det = self.marginal_cov(t, var0x, var0v)
    l11, l21, l22 = (batch_broadcast(a, u0) for a in cholesky_2x2((sxx, sxv, svv), det))
    eps = jax.random.normal(rng, u0.shape, u0.dtype)
    eps_x, eps_v = self.split(eps)
    mean_x, mean_v = self.split(self.mean(u0, t))
    u_t = self.join(mean_x + l11 * eps_x, mean_v + l21 * eps_x + l22 * eps_v)
    return u_t, eps, -1.0 / l22

  # --- prior -------------------------------------------------------------------------
  def prior_sample(self, rng: Array, shape: tuple[int, ...]) -> Array:
    """u ~ N(0, I) x N(0, M I); ``shape`` is the shape of u (last axis 2C)."""
    if shape[-1] % 2:
      raise ValueError(f"CLD state needs an even last axis (x, v), got shape {shape}")
    z = jax.random.normal(rng, shape)
    x, v = self.split(z)
    return self.join(x, v * math.sqrt(self.mass))

  def prior_logp_xv(self, u: Array) -> tuple[Array, Array]:
    """(log N(x; 0, I), log N(v; 0, M I)), each [B]."""
    x, v = self.split(u)
    n = math.prod(x.shape[1:])
    sq = lambda a: jnp.sum(jnp.reshape(a**2, (a.shape[0], -1)), axis=-1)
    logx = -0.5 * n * math.log(2.0 * math.pi) - 0.5 * sq(x)
    logv = -0.5 * n * math.log(2.0 * math.pi * self.mass) - 0.5 * self.m_inv * sq(v)
    return logx, logv

  def prior_logp(self, u: Array) -> Array:
    """log N(x; 0, I) + log N(v; 0, M I), per example [B]."""
    logx, logv = self.prior_logp_xv(u)
    return logx + logv

  def init_velocity(self, rng: Array, x: Array) -> Array:
    """v0 ~ N(0, gamma M I), shape of x (for DSM, where v0 is sampled)."""
    return jax.random.normal(rng, x.shape, x.dtype) * math.sqrt(self.hsm_var0v)

  # --- reverse process ---------------------------------------------------------------
  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "CLDReverseSDE":
    """Reverse SDE / probability-flow ODE from a VELOCITY score ``score_fn(u, t) -> [shape v]``.

    Only v is driven by the score since x carries no noise (CLD paper, Sec. 3):
    drift_v <- f_v - w 2 Gamma beta score_v (w = 1 or 1/2), drift_x unchanged.
    """
    return CLDReverseSDE(self, score_fn, probability_flow)

  # --- SSCS helpers (CLD paper, Sec. 3.3 and appendix on SSCS) -------------------------
  def transition_mean_cov(self, u: Array, s: Array, t: Array) -> tuple[Array, Cov2]:
    """Exact forward transition p(u_t | u_s), s <= t (the forward CLD is linear).

    Args:
      u: state at time s, ``[B, ..., 2C]``.
      s, t: times ``[B]``.

    Returns:
      (mean [shape u], (sxx, sxv, svv) each [B, 1, ..., 1]); numerical_eps not added.
    """
    x, v = self.split(u)
    big_b = self.integrated_beta(t) - self.integrated_beta(s)
    mean_x, mean_v = self._mean_map(x, v, batch_broadcast(big_b, x))
    cov, _ = self._cov_from_b(big_b, 0.0, 0.0, 0.0)
    return self.join(mean_x, mean_v), tuple(batch_broadcast(a, u) for a in cov)

  def ou_step_mean_cov(self, u: Array, t: Array, dt: float | Array,
                       num_stab: float = 0.0) -> tuple[Array, Cov2, Array]:
    """Exact solution of SSCS's analytic part over one REVERSE step t -> t - dt.

    SSCS splits the reverse-time SDE (time s = 1 - t running forward) into
      (A) dx = -M^{-1} beta v ds,  dv = (beta x - Gamma M^{-1} beta v) ds + sqrt(2 Gamma beta) dw
      (S) dv = 2 Gamma beta (score_v + M^{-1} v) ds,
    and integrates (A) exactly: it is the forward CLD conjugated by v -> -v, so
    p(u' | u) = N(P e^{B A} P u, P Q(B) P), P = diag(1, -1), B = int_{t-dt}^{t} beta.
    A typical SSCS step: (A) over dt/2, (S) by Euler over dt (``sscs_score_step``),
    (A) over dt/2.

    Args:
      u: state at time t, ``[B, ..., 2C]``.
      t: current times ``[B]``.
      dt: positive reverse step (pass dt/2 for a half step).
      num_stab: added to the covariance diagonal (the reference's ``sscs_num_stab``).

    Returns:
      (mean [shape u], (sxx, sxv, svv) each [B, 1, ..., 1], det [B, 1, ..., 1]).
    """
    x, v = self.split(u)
    # int_{t-dt}^{t} beta for linear beta, without the cancelling B(t) - B(t - dt).
    h = jnp.minimum(dt, t)
    big_b = h * self.beta(t - 0.5 * h)
    mean_x, mean_v = self._mean_map(x, -v, batch_broadcast(big_b, x))
    (sxx, sxv, svv), det = self._cov_from_b(big_b, 0.0, 0.0, num_stab)
    bc = lambda a: batch_broadcast(a, u)
    return self.join(mean_x, -mean_v), (bc(sxx), bc(-sxv), bc(svv)), bc(det)

  def sample_ou_step(self, rng: Array, u: Array, t: Array, dt: float | Array,
                     num_stab: float = 0.0) -> Array:
    """Draws from ``ou_step_mean_cov`` (one analytic SSCS (half-)step t -> t - dt)."""
    mean, cov, det = self.ou_step_mean_cov(u, t, dt, num_stab)
    l11, l21, l22 = cholesky_2x2(cov, det)
    eps_x, eps_v = self.split(jax.random.normal(rng, u.shape, u.dtype))
    mean_x, mean_v = self.split(mean)
    return self.join(mean_x + l11 * eps_x, mean_v + l21 * eps_x + l22 * eps_v)

  def sscs_score_step(self, u: Array, t: Array, dt: float | Array, score_v: Array) -> Array:
    """Euler step of SSCS's score part (S): v <- v + 2 Gamma beta(t) (score_v + M^{-1} v) dt.

    Args:
      u: state ``[B, ..., 2C]`` at time t; t: ``[B]``; dt: positive reverse step;
      score_v: velocity score at (u, t), shape of v.
    """
    x, v = self.split(u)
    beta = batch_broadcast(self.beta(t), v)
    return self.join(x, v + 2.0 * self.damping * beta * (score_v + self.m_inv * v) * dt)


@functools.partial(jax.jit, static_argnums=0)
def _cov_from_b_jit(cld: CLD, big_b: Array, var0x: Array | float, var0v: Array | float,
                    eps: float) -> tuple[Cov2, Array]:
  return cld._cov_from_b_impl(big_b, var0x, var0v, eps)  # pylint: disable=protected-access


class CLDReverseSDE(ReverseSDE):
  """Reverse-time CLD driven by a velocity score (CLD paper, Sec. 3).

  ``velocity_score_fn(u, t)`` is the user's velocity score; ``score_fn`` is the full-u
  score with zeros on x, so the generic ``ReverseSDE.sde``/``discretize`` apply unchanged
  (x has zero diffusion, so the x part of the score never matters).
  """

  def __init__(self, forward: CLD, score_fn: ScoreFn, probability_flow: bool):
    def full_score(u: Array, t: Array) -> Array:
      s_v = score_fn(u, t)
      return CLD.join(jnp.zeros_like(s_v), s_v)

    super().__init__(forward, full_score, probability_flow)
    self.velocity_score_fn = score_fn


def cld_mixed_score(cld: CLD, u: Array, t: Array, net_out: Array,
                    var0v: Array | float | None = None) -> Array:
  """CLD-SGM's "mixed score": Gaussian velocity score plus a scaled network correction.

  score_v = -v / Sigma_vv(t; var0x=0, var0v=gamma M) + (-l_t) net_out: the first term is
  the velocity score of the kernel started at x0 = 0 with v0 ~ N(0, gamma M) (exactly the
  reference's ``get_score_fn``, which calls ``sde.var(t, 0 * ones, gamma / m_inv * ones)``),
  and -l_t = ``noise_multiplier(t, 0, var0v)``.
  Without mixing, score_v = -l_t net_out (the network predicts eps_v).

  Args:
    cld: the process.
    u: state ``[B, ..., 2C]``; t: ``[B]``.
    net_out: network output, shape of v.
    var0v: initial velocity variance of the training objective (0 DSM, gamma M HSM).

  Returns:
    Velocity score, shape of v.
  """
  _, v = CLD.split(u)
  (_, _, svv), _ = cld.marginal_cov(t, 0.0, cld.hsm_var0v)
  nm = cld.noise_multiplier(t, 0.0, var0v)
  return -v / batch_broadcast(svv, v) + batch_broadcast(nm, v) * net_out
