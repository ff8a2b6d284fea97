"""The joint LSGM step's gradients against the reference formulas (issue 14, item 1).

NVlabs/LSGM ``training_obj_joint.py`` (``train_vada_joint``) trains the VAE on the
q loss  mean(recon + kl_coeff * (log q + CE)),  and the score model on the p loss
mean(sum w_p ||eps - eps_theta||^2) when p and q are different objectives
(``utils.different_p_q_objectives``: the q-loss gradient of the score model is
discarded by ``dae_optimizer.zero_grad()``; with q drawing its own times the p half's
z_t is ``detach``-ed from the encoder), or on the q loss itself when both are the same
likelihood objective (``ll_*`` with ``reweight_p_samples``). Here the whole q / p
computation is written again in plain JAX from the reference's formulas (VP SDE with
sigma2_0 = 0 in closed form, the ``ll_iw`` / ``ll_uniform`` / ``drop_all_uniform`` time
draws and weights of ``diffusion_continuous._iw_quantities_vpsdelike``, the mixed
prediction of ``utils.get_mixed_prediction``, the network input masked by the active
channels as ``ncsnpp.py``'s ``mask_inactive_variables``, the cross-entropy constant), only the
NVAE's forward pass and the raw network are shared, and the gradients are taken
separately: VAE from q, score model from p or q. The method's single-scalar loss
(custom VJP in ``methods/lsgm._routed``) must give the same gradients; the
wrongly-routed alternative must not.

The NVAE and the NCSN++ are replaced by small stand-ins with the same interfaces (a
dense encoder / decoder with two top groups under the SGM prior and one lower group
under N(0, I); a two-layer conv net with a per-channel ``mixing_logit`` parameter): what
is under test is the method's joint objective and its gradient routing, not the networks
(tests/test_nvae.py, test_models.py and the NumPy NVAE of test_lsgm_method.py cover
them), and the stand-ins keep the compile within the CI budget.
"""

from __future__ import annotations

import functools

import copy
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, methods
from lsgm_jax.models import nvae as nvae_lib
from lsgm_jax.models import nvae_decoder_dist
from tests.helpers import load_config
from tests.helpers import CHEAP_COMPILER_OPTIONS

BATCH = 4
TIME_EPS = 1e-2
STEP = 0  # cont_kl_anneal: kl_coeff = 0.7 at step 0


REST_SHAPE = (8, 8, 2)  # the lower group under the N(0, I) prior


class _DenseVAE(nn.Module):
  """A one-layer Gaussian encoder / Bernoulli decoder returning an ``NVAEOutput``."""

  top_shapes: tuple
  image_shape: tuple

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    h = jnp.reshape(x, (x.shape[0], -1))
    eps, log_q = [], []
    for i, shape in enumerate(tuple(self.top_shapes) + (REST_SHAPE,)):
      size = int(np.prod(shape))
      mu = nn.Dense(size, name=f"mu_{i}")(h).reshape((-1,) + shape)
      log_sigma = 0.3 * jnp.tanh(nn.Dense(size, name=f"ls_{i}")(h)).reshape((-1,) + shape)
      e = mu + jnp.exp(log_sigma) * jax.random.normal(self.make_rng("sample"), mu.shape)
      eps.append(e)
      log_q.append(nvae_lib.normal_log_prob(e, mu, log_sigma))
    flat = jnp.concatenate([jnp.reshape(e, (e.shape[0], -1)) for e in eps], axis=-1)
    logits = nn.Dense(int(np.prod(self.image_shape)), name="dec")(jnp.tanh(flat))
    self.sow("losses", "spectral", jnp.zeros((), jnp.float32))
    zeros = tuple(jnp.zeros_like(e) for e in eps)
    return nvae_lib.NVAEOutput(logits.reshape((-1,) + tuple(self.image_shape)), tuple(eps),
                               zeros, zeros, zeros, zeros, tuple(log_q), zeros,
                               jnp.zeros((x.shape[0], len(eps))))


class _ConvScore(nn.Module):
  """eps_net(z_t, t): conv, + time features, swish, conv; and the mixing logits."""

  channels: int

  @nn.compact
  def __call__(self, z_t, t, train: bool = False):
    del train
    self.param("mixing_logit", nn.initializers.constant(-6.0), (self.channels,))
    h = nn.Conv(16, (3, 3), name="conv_in")(z_t)
    h = h + nn.Dense(16, name="temb")(jnp.stack([t, jnp.sin(3 * t)], -1))[:, None, None]
    return nn.Conv(self.channels, (3, 3), name="conv_out")(nn.swish(h))


_CHEAP = CHEAP_COMPILER_OPTIONS

def _method(iw_sample_p: str, iw_sample_q: str):
  config = load_config("lsgm_digits", "lsgm_smoke")
  with config.unlocked():
    config.lsgm.iw_sample_p = iw_sample_p
    config.lsgm.iw_sample_q = iw_sample_q
    config.lsgm.weight_decay_norm_vae = 0.0  # regularisers are not under test here
  method = copy.copy(methods.build_method(config, data.dataset_info(config.data)))
  group = method.vae_cfg.latent_shapes()[0]
  method.vae = _DenseVAE((tuple(group),) * method.num_top, (8, 8, 1))
  method.score_model = _ConvScore(method.latent_shape[-1])
  return method, config


@pytest.fixture(scope="module")
def fixed_params():
  """Random (host-filled) params of the tiny stage-2 model with mixing logits in [-1, 1]."""
  method, _ = _method("ll_iw", "reweight_p_samples")
  r = np.random.RandomState(0)

  def fill(x):
    if len(x.shape) < 2:
      return jnp.asarray(0.1 * r.normal(size=x.shape), x.dtype)
    return jnp.asarray(r.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1])), x.dtype)
  params, state = jax.tree.map(fill, jax.eval_shape(method.init_params,
                                                    jax.random.key(0, impl="rbg")))
  c = params["score"]["mixing_logit"].shape[0]
  params["score"]["mixing_logit"] = jnp.linspace(-1.0, 1.0, c, dtype=jnp.float32)
  # drop_inactive_var: channel 0 inactive; the reference masks the network's input.
  assert state["score_mask"].shape == (c,)
  state["score_mask"] = jnp.ones((c,), jnp.float32).at[0].set(0.0)
  x = jnp.where(jax.random.uniform(jax.random.PRNGKey(3), (BATCH, 8, 8, 1)) > 0.5, 1.0, -1.0)
  return params, state, x


# --- the reference's formulas (VP SDE, sigma2_0 = 0) ---------------------------------

def _vp(config):
  bmin, bmax = float(config.sde.beta_min), float(config.sde.beta_max)
  big_b = lambda t: bmin * t + 0.5 * (bmax - bmin) * t ** 2
  var = lambda t: 1.0 - jnp.exp(-big_b(t))
  m = lambda t: jnp.exp(-0.5 * big_b(t))
  g2 = lambda t: bmin + (bmax - bmin) * t
  # t from var: B = -log(1 - var), the positive root of 1/2 d t^2 + bmin t - B = 0.
  inv_var = lambda v: (-bmin + jnp.sqrt(bmin ** 2 - 2.0 * (bmax - bmin) * jnp.log1p(-v))) / (
      bmax - bmin)
  return var, m, g2, inv_var


def _draws(config, rho, mode):
  """(t, var_t, m_t, w_p, w_ll) of diffusion_continuous._iw_quantities_vpsdelike.

  Uniform modes carry the interval length (1 - eps) here (this codebase's documented
  deliberate difference, sde/lsgm_diffusion.py); the importance-sampled ones do not.
  """
  var, m, g2, inv_var = _vp(config)
  if mode == "ll_iw":
    lv1, lv0 = jnp.log(var(jnp.float32(1.0))), jnp.log(var(jnp.float32(TIME_EPS)))
    var_t = jnp.exp(rho * lv1 + (1.0 - rho) * lv0)
    t = inv_var(var_t)
    w = 0.5 * (lv1 - lv0) / (1.0 - var_t)
    return t, var_t, m(t), w, w
  t = rho * (1.0 - TIME_EPS) + TIME_EPS
  w_ll = (1.0 - TIME_EPS) * g2(t) / (2.0 * var(t))
  if mode == "ll_uniform":
    return t, var(t), m(t), w_ll, w_ll
  if mode == "drop_all_uniform":
    return t, var(t), m(t), jnp.full_like(t, 1.0 - TIME_EPS), w_ll
  raise ValueError(mode)


def _reference_losses(method, config, params, state, x, rng):
  """(q_loss, p_loss) as training_obj_joint.py computes them, both functions of params."""
  lc = config.lsgm
  vae_rng, loss_rng, _ = jax.random.split(rng, 3)
  rng_p, rng_q, rng_z, _ = jax.random.split(loss_rng, 4)
  out, _ = method.vae.apply({"params": params["vae"], **state["vae"]}, x, train=True,
                            rngs={"sample": vae_rng},
                            mutable=list(nvae_lib.MUTABLE_COLLECTIONS))
  num_top = method.num_top
  z0 = jnp.concatenate(out.eps[:num_top], axis=-1)
  recon = -nvae_decoder_dist.decoder_log_prob(method.vae_cfg, out.logits, x)
  var, _, _, _ = _vp(config)
  b = lambda a: a[:, None, None, None]

  def eps_theta(z_t, t, var_t):
    z_in = z_t * state["score_mask"]  # score_sde/ncsnpp.py: mask_inactive_variables
    net = method.score_model.apply({"params": params["score"], **state["score"]}, z_in, t,
                                   train=False)
    coeff = jax.nn.sigmoid(params["score"]["mixing_logit"])
    return (1.0 - coeff) * jnp.sqrt(b(var_t)) * z_t + coeff * net  # VP mixing component

  noise = jax.random.normal(rng_z, z0.shape, z0.dtype)
  t_p, var_p, m_p, w_p, w_ll_p = _draws(config, jax.random.uniform(rng_p, (BATCH,)),
                                        lc.iw_sample_p)
  z_t_p = b(m_p) * z0 + jnp.sqrt(b(var_p)) * noise
  if lc.iw_sample_q == "reweight_p_samples":
    l2 = jnp.square(eps_theta(z_t_p, t_p, var_p) - noise)
    l2_p, l2_q, w_q = l2, l2, w_ll_p
  else:
    t_q, var_q, m_q, w_q, _ = _draws(config, jax.random.uniform(rng_q, (BATCH,)),
                                     lc.iw_sample_q)
    z_t_q = b(m_q) * z0 + jnp.sqrt(b(var_q)) * noise
    z_t_p = jax.lax.stop_gradient(z_t_p)  # eps_t_p.detach()
    l2_p = jnp.square(eps_theta(z_t_p, t_p, var_p) - noise)
    l2_q = jnp.square(eps_theta(z_t_q, t_q, var_q) - noise)
  p_objective = jnp.sum(b(w_p) * l2_p, axis=(1, 2, 3))
  ce_const = 0.5 * (1.0 + jnp.log(2.0 * math.pi * var(jnp.float32(TIME_EPS))))
  ce_per_var = b(w_q) * l2_q + ce_const
  neg_log_p_rest = sum(jnp.sum(0.5 * e ** 2 + 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))
                       for e in out.eps[num_top:])
  log_q = sum(jnp.sum(lq, axis=(1, 2, 3)) for lq in out.log_q)
  kl = log_q + jnp.sum(ce_per_var, axis=(1, 2, 3)) + neg_log_p_rest
  kl_coeff = 0.7  # configs/lsgm_digits.py STAGE1_KL_MAX, the value at step 0
  q_loss = jnp.mean(recon + kl_coeff * kl)
  p_loss = jnp.mean(p_objective)
  return q_loss, p_loss


def _max_rel_err(a, b) -> float:
  a, b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(a)]), \
      np.concatenate([np.ravel(v) for v in jax.tree.leaves(b)])
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


@pytest.mark.parametrize("iw_sample_p,iw_sample_q", [
    ("ll_iw", "reweight_p_samples"),           # same objective: everything trained by q
    ("ll_iw", "ll_uniform"),                   # different: q has its own times
])
def test_joint_step_gradients_match_reference(fixed_params, iw_sample_p, iw_sample_q):
  method, config = _method(iw_sample_p, iw_sample_q)
  params, state, x = fixed_params
  rng = jax.random.PRNGKey(11)
  batch = {"x": x}

  @functools.partial(jax.jit, compiler_options=_CHEAP)  # compile-bound
  def grads(params):
    (_, (metrics, _)), g_method = jax.value_and_grad(
        lambda p: method.loss(p, state, batch, rng, STEP), has_aux=True)(params)
    (q_loss, p_loss), vjp = jax.vjp(
        lambda p: _reference_losses(method, config, p, state, x, rng), params)
    one, zero = jnp.ones(()), jnp.zeros(())
    (g_q,), (g_p,) = vjp((one, zero)), vjp((zero, one))
    return g_method, g_q, g_p, (q_loss, p_loss, metrics["q_loss"], metrics["p_loss"])

  g_method, g_q, g_p, losses = grads(params)
  q_ref, p_ref, q_method, p_method = (float(v) for v in losses)
  assert q_method == pytest.approx(q_ref, rel=1e-5)
  assert p_method == pytest.approx(p_ref, rel=1e-5)
  same = iw_sample_p == "ll_iw" and iw_sample_q == "reweight_p_samples"
  # VAE: always the q loss.
  assert _max_rel_err(g_method["vae"], g_q["vae"]) < 1e-4
  sgm_ref, sgm_wrong = (g_q, g_p) if same else (g_p, g_q)
  assert _max_rel_err(g_method["score"], sgm_ref["score"]) < 1e-4
  # The alternative routing is far away, so the check above discriminates.
  assert _max_rel_err(sgm_wrong["score"], sgm_ref["score"]) > 1e-2
  # The mixing logit's gradient in particular (per latent channel).
  np.testing.assert_allclose(g_method["score"]["mixing_logit"],
                             sgm_ref["score"]["mixing_logit"], rtol=1e-3, atol=1e-5)
