"""LSGM's objectives as pure functions: mixed score, cross entropy, p (SGM) and q (VAE) terms.

LSGM (Vahdat, Kreis, Kautz 2021) trains a VAE whose prior over the latents z_0 is a
score-based model. Its ELBO's KL splits into the encoder's negative entropy and the cross
entropy CE(q(z_0|x) || p(z_0)), and LSGM Theorem 1 writes the cross entropy as denoising
score matching: in the noise-prediction form used here,

  CE = int_eps^1 g^2(t) / (2 var(t)) E_{z_0, eps}||eps - eps_theta(z_t, t)||^2 dt
       + D/2 log(2 pi e var(eps)) + [CE(q_1, p_1) - D/2 log(2 pi e var(1))],

with z_t = m_t z_0 + sqrt(var(t)) eps (``LSGMDiffusion`` kernels, var(eps) = sigma2_0 at
eps = 0). It holds with equality when eps_theta is the exact noise prediction of the
prior's own diffused marginals, and is then the cross entropy of the eps-perturbed q and
p. The bracket is the mismatch at t = 1, which the reference drops (``kl_T = 0``); here
``terminal_cross_entropy`` estimates it when asked.

Mixed score (LSGM "mixed score" parameterisation): the network's noise prediction is
mixed with the optimal one for Normal latents, per latent channel,

  eps_theta(z_t, t) = (1 - alpha) * eps_normal(z_t, t) + alpha * eps_net(z_t, t),
  alpha = sigmoid(mixing_logit),   eps_normal = sqrt(var_t) z_t / normal_var(t)

(sigma_t z_t for the VP-type SDEs), so the SGM only models the mismatch between the
latents' distribution and N(0, I). ``mixing_logit`` has one entry per channel (the last
axis, NHWC) and is a trainable parameter of the score model.

Two objectives share the network (LSGM's training algorithms; reference
``training_obj_joint.py``): the SGM prior ``p_objective`` with weights from
``iw_sample_p`` (likelihood, unweighted or reweighted, uniform or importance-sampled t),
and the VAE's cross entropy with likelihood weights, either reusing the p draws
(``iw_sample_q="reweight_p_samples"``) or from its own draws. Every function returns
per-example values; reductions and gradient routing live in the method: the p objective
trains only the score model (its gradient with respect to the encoder is discarded), the
cross entropy trains the VAE (and the score model when p and q are the same likelihood
objective).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lsgm_jax.sde.base import Array, ScoreFn, batch_broadcast
from lsgm_jax.sde.lsgm_diffusion import IW_MODES, IWQuantities, LSGMDiffusion

NoisePredFn = Callable[[Array, Array], Array]
"""``noise_pred_fn(z_t, t) -> eps`` with ``z_t`` ``[B, ...]``, ``t`` ``[B]``: the network's
noise prediction BEFORE mixing."""

REWEIGHT_P_SAMPLES = "reweight_p_samples"


def _sum_per_example(x: Array) -> Array:
  return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def mixing_coefficient(mixing_logit: Array) -> Array:
  """alpha = sigmoid(mixing_logit), the network's share of the mixed prediction."""
  return jax.nn.sigmoid(mixing_logit)


def mixed_prediction(eps_net: Array, eps_normal: Array, mixing_logit: Array) -> Array:
  """(1 - alpha) eps_normal + alpha eps_net, alpha = sigmoid(logit) (LSGM "mixed score").

  Args:
    eps_net: network noise prediction ``[B, ..., C]``.
    eps_normal: the mixing component (``LSGMDiffusion.mixing_component``), same shape.
    mixing_logit: ``[C]`` (broadcast on the last axis) or a scalar.

  Returns:
    The mixed noise prediction, shape of ``eps_net``. A very negative logit gives
    exactly ``eps_normal`` (sigmoid underflows to 0).
  """
  alpha = mixing_coefficient(mixing_logit).astype(eps_net.dtype)
  return (1.0 - alpha) * eps_normal + alpha * eps_net


def make_mixed_noise_pred_fn(diffusion: LSGMDiffusion, noise_pred_fn: NoisePredFn,
                             mixing_logit: Array | None) -> NoisePredFn:
  """The score model's final noise prediction eps_theta(z_t, t).

  Args:
    diffusion: the latent diffusion.
    noise_pred_fn: network noise prediction before mixing.
    mixing_logit: ``[C]`` logits, or ``None`` for no mixing (the reference's
      ``mixed_prediction=False``).

  Returns:
    ``fn(z_t, t) -> eps``.
  """
  if mixing_logit is None:
    return noise_pred_fn

  def fn(z_t: Array, t: Array) -> Array:
    return mixed_prediction(noise_pred_fn(z_t, t), diffusion.mixing_component(z_t, t),
                            mixing_logit)

  return fn


def make_mixed_score_fn(diffusion: LSGMDiffusion, noise_pred_fn: NoisePredFn,
                        mixing_logit: Array | None) -> ScoreFn:
  """Score -eps_theta(z_t, t) / sqrt(var(t)) for the samplers and the ODE likelihood.

  The probability-flow drift f z - 1/2 g^2 score is then the reference's
  f z + 1/2 g^2 eps_theta / sigma_t.

  Args:
    diffusion: the latent diffusion.
    noise_pred_fn: network noise prediction before mixing.
    mixing_logit: ``[C]`` logits or ``None``.

  Returns:
    ``score_fn(z_t, t) -> score``.
  """
  eps_fn = make_mixed_noise_pred_fn(diffusion, noise_pred_fn, mixing_logit)

  def score_fn(z_t: Array, t: Array) -> Array:
    return -eps_fn(z_t, t) / batch_broadcast(jnp.sqrt(diffusion.var(t)), z_t)

  return score_fn


def denoising_error(diffusion: LSGMDiffusion, noise_pred_fn: NoisePredFn,
                    mixing_logit: Array | None, z0: Array, noise: Array,
                    draws: IWQuantities) -> Array:
  """Per-variable ||eps - eps_theta(z_t, t)||^2 at z_t = m_t z_0 + sqrt(var_t) eps.

  Args:
    diffusion: the latent diffusion.
    noise_pred_fn: network noise prediction before mixing.
    mixing_logit: ``[C]`` logits or ``None``.
    z0: latents ``[B, ...]``.
    noise: eps ``[B, ...]``.
    draws: ``IWQuantities`` for the B examples.

  Returns:
    ``[B, ...]`` squared errors.
  """
  z_t = diffusion.sample_q(z0, noise, draws.var_t, draws.m_t)
  eps_fn = make_mixed_noise_pred_fn(diffusion, noise_pred_fn, mixing_logit)
  return jnp.square(eps_fn(z_t, draws.t) - noise)


def terminal_cross_entropy(rng: Array, diffusion: LSGMDiffusion, z0: Array,
                           prior_logp: Callable[[Array], Array] | None = None) -> Array:
  """One-sample estimate of CE(q_1, p_1) - D/2 log(2 pi e var(1)), per example.

  The t = 1 boundary term of LSGM Theorem 1 (the reference sets it to 0): z_1 ~
  q(z_1 | z_0), minus log p_1(z_1), minus the entropy of the kernel at t = 1.

  Args:
    rng: PRNG key.
    diffusion: the latent diffusion.
    z0: latents ``[B, ...]``.
    prior_logp: log-density of p_1 per example; default ``diffusion.prior_logp``.

  Returns:
    ``[B]``.
  """
  prior_logp = diffusion.prior_logp if prior_logp is None else prior_logp
  ones = jnp.ones((z0.shape[0],), jnp.float32)
  z1, _, _ = diffusion.sample_marginal(rng, z0, ones)
  dim = math.prod(z0.shape[1:])
  kernel_entropy = 0.5 * dim * (1.0 + jnp.log(2.0 * math.pi * diffusion.var(ones)))
  return -prior_logp(z1) - kernel_entropy


class CrossEntropy(NamedTuple):
  """The VAE's cross-entropy term CE(q(z_0|x) || p(z_0)).

  Attributes:
    per_example: ``[B]`` totals (plus the terminal term when requested).
    per_variable: ``[B, ...]`` per latent variable, without the terminal term (for
      NVAE's per-group KL balancing; the reference's ``cross_entropy_per_var``).
  """

  per_example: Array
  per_variable: Array


def _cross_entropy_from(diffusion: LSGMDiffusion, l2: Array, draws: IWQuantities,
                        time_eps: float) -> Array:
  # LSGM Theorem 1, noise form: w_ll(t) ||eps - eps_theta||^2 + 1/2 log(2 pi e var(eps)).
  return batch_broadcast(draws.weight_ll, l2) * l2 + diffusion.cross_entropy_const(time_eps)


def cross_entropy(rng: Array, diffusion: LSGMDiffusion, noise_pred_fn: NoisePredFn,
                  mixing_logit: Array | None, z0: Array, *, iw_sample_q: str = "ll_iw",
                  time_eps: float = 1e-2, include_terminal: bool = False) -> CrossEntropy:
  """Monte-Carlo cross entropy of the latents under the SGM prior (LSGM Theorem 1).

  Args:
    rng: PRNG key.
    diffusion: the latent diffusion.
    noise_pred_fn: network noise prediction before mixing.
    mixing_logit: ``[C]`` logits or ``None``.
    z0: encoder samples ``[B, ...]``.
    iw_sample_q: how t is drawn: any of ``IW_MODES`` (the likelihood weights of that
      mode's draws are used; the reference allows ``ll_uniform`` / ``ll_iw``).
    time_eps: smallest time eps.
    include_terminal: add ``terminal_cross_entropy`` (the reference omits it).

  Returns:
    ``CrossEntropy``; E[per_example] is the cross entropy of the eps-perturbed latents.
  """
  if iw_sample_q not in IW_MODES:
    raise ValueError(f"iw_sample_q must be one of {IW_MODES}, got {iw_sample_q!r}")
  rng_t, rng_z, rng_1 = jax.random.split(rng, 3)
  draws = diffusion.iw_quantities(rng_t, z0.shape[0], time_eps, iw_sample_q)
  noise = jax.random.normal(rng_z, z0.shape, z0.dtype)
  l2 = denoising_error(diffusion, noise_pred_fn, mixing_logit, z0, noise, draws)
  per_var = _cross_entropy_from(diffusion, l2, draws, time_eps)
  total = _sum_per_example(per_var)
  if include_terminal:
    total = total + terminal_cross_entropy(rng_1, diffusion, z0)
  return CrossEntropy(total, per_var)


def p_objective(rng: Array, diffusion: LSGMDiffusion, noise_pred_fn: NoisePredFn,
                mixing_logit: Array | None, z0: Array, *, iw_sample_p: str = "ll_iw",
                time_eps: float = 1e-2) -> Array:
  """The SGM prior's loss sum_i weight_p(t) (eps - eps_theta)_i^2 per example.

  Args:
    rng: PRNG key.
    diffusion: the latent diffusion.
    noise_pred_fn: network noise prediction before mixing.
    mixing_logit: ``[C]`` logits or ``None``.
    z0: latents ``[B, ...]`` (treat as constants: this loss trains the score model only).
    iw_sample_p: one of ``IW_MODES``.
    time_eps: smallest time eps.

  Returns:
    ``[B]``; its mean estimates int_eps^1 w_mode(t) E||eps - eps_theta||^2 dt.
  """
  if iw_sample_p not in IW_MODES:
    raise ValueError(f"iw_sample_p must be one of {IW_MODES}, got {iw_sample_p!r}")
  rng_t, rng_z = jax.random.split(rng)
  draws = diffusion.iw_quantities(rng_t, z0.shape[0], time_eps, iw_sample_p)
  noise = jax.random.normal(rng_z, z0.shape, z0.dtype)
  l2 = denoising_error(diffusion, noise_pred_fn, mixing_logit, z0, noise, draws)
  return _sum_per_example(batch_broadcast(draws.weight_p, l2) * l2)


class LSGMTerms(NamedTuple):
  """Per-example terms of one LSGM training step (reference ``training_obj_joint.py``).

  Attributes:
    p_objective: ``[B]`` SGM-prior loss (train the score model on its mean).
    cross_entropy: ``[B]`` the VAE's cross entropy (enters the KL with the encoder's
      log q; train the VAE on it).
    cross_entropy_per_var: ``[B, ...]`` the same per latent variable.
  """

  p_objective: Array
  cross_entropy: Array
  cross_entropy_per_var: Array


PairedEpsFn = Callable[[Array, Array], tuple[Array, Array]]
"""``fn(z_t, t) -> (eps_for_q, eps_for_p)``: the final (mixed) noise prediction, returned
twice so that a caller can route gradients (equal values; see ``methods/lsgm.py``)."""


def lsgm_terms(rng: Array, diffusion: LSGMDiffusion, noise_pred_fn: NoisePredFn,
               mixing_logit: Array | None, z0: Array, *, iw_sample_p: str = "ll_iw",
               iw_sample_q: str = REWEIGHT_P_SAMPLES, time_eps: float = 1e-2,
               include_terminal: bool = False) -> LSGMTerms:
  """The p and q objectives with one network call (LSGM's joint training).

  With ``iw_sample_q="reweight_p_samples"`` the q term reuses the p draws with their
  likelihood weights (``weight_ll``), so both terms come from the same B evaluations.
  Otherwise q gets its own draws (any ``IW_MODES`` entry, the reference uses ``ll_uniform``
  or ``ll_iw``) and the network runs once on the 2B concatenated inputs.

  Args:
    rng: PRNG key.
    diffusion: the latent diffusion.
    noise_pred_fn: network noise prediction before mixing.
    mixing_logit: ``[C]`` logits or ``None``.
    z0: encoder samples ``[B, ...]``.
    iw_sample_p: the p objective's mode, one of ``IW_MODES``.
    iw_sample_q: ``"reweight_p_samples"`` or one of ``IW_MODES``.
    time_eps: smallest time eps.
    include_terminal: add ``terminal_cross_entropy`` to the cross entropy.

  Returns:
    ``LSGMTerms``.
  """
  eps_fn = make_mixed_noise_pred_fn(diffusion, noise_pred_fn, mixing_logit)

  def pair(z_t, t):
    eps = eps_fn(z_t, t)
    return eps, eps

  return lsgm_terms_paired(rng, diffusion, pair, z0, iw_sample_p=iw_sample_p,
                           iw_sample_q=iw_sample_q, time_eps=time_eps,
                           include_terminal=include_terminal)


def lsgm_terms_paired(rng: Array, diffusion: LSGMDiffusion, eps_pair_fn: PairedEpsFn,
                      z0: Array, *, iw_sample_p: str = "ll_iw",
                      iw_sample_q: str = REWEIGHT_P_SAMPLES, time_eps: float = 1e-2,
                      include_terminal: bool = False) -> LSGMTerms:
  """``lsgm_terms`` with a paired final prediction: p uses the second output, q the first.

  Args:
    rng: PRNG key.
    diffusion: the latent diffusion.
    eps_pair_fn: ``fn(z_t, t) -> (eps_q, eps_p)`` (mixing already applied).
    z0: encoder samples ``[B, ...]``.
    iw_sample_p, iw_sample_q, time_eps, include_terminal: as ``lsgm_terms``.

  Returns:
    ``LSGMTerms``.
  """
  if iw_sample_p not in IW_MODES:
    raise ValueError(f"iw_sample_p must be one of {IW_MODES}, got {iw_sample_p!r}")
  if iw_sample_q != REWEIGHT_P_SAMPLES and iw_sample_q not in IW_MODES:
    raise ValueError(f"iw_sample_q must be {REWEIGHT_P_SAMPLES!r} or one of {IW_MODES}, "
                     f"got {iw_sample_q!r}")
  batch = z0.shape[0]
  rng_p, rng_q, rng_z, rng_1 = jax.random.split(rng, 4)
  draws_p = diffusion.iw_quantities(rng_p, batch, time_eps, iw_sample_p)
  if iw_sample_q == REWEIGHT_P_SAMPLES:
    noise = jax.random.normal(rng_z, z0.shape, z0.dtype)
    z_t = diffusion.sample_q(z0, noise, draws_p.var_t, draws_p.m_t)
    eps_q, eps_p = eps_pair_fn(z_t, draws_p.t)
    l2_p, l2_q, draws_q = jnp.square(eps_p - noise), jnp.square(eps_q - noise), draws_p
  else:
    draws_q = diffusion.iw_quantities(rng_q, batch, time_eps, iw_sample_q)
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), draws_p, draws_q)
    # One noise draw shared by the two halves, as the reference.
    noise = jax.random.normal(rng_z, z0.shape, z0.dtype)
    noise2 = jnp.concatenate([noise, noise], axis=0)
    z_t = diffusion.sample_q(jnp.concatenate([z0, z0], axis=0), noise2, both.var_t, both.m_t)
    eps_q, eps_p = eps_pair_fn(z_t, both.t)
    l2_p = jnp.square(eps_p[:batch] - noise)
    l2_q = jnp.square(eps_q[batch:] - noise)
  p_obj = _sum_per_example(batch_broadcast(draws_p.weight_p, l2_p) * l2_p)
  per_var = _cross_entropy_from(diffusion, l2_q, draws_q, time_eps)
  ce = _sum_per_example(per_var)
  if include_terminal:
    ce = ce + terminal_cross_entropy(rng_1, diffusion, z0)
  return LSGMTerms(p_obj, ce, per_var)
