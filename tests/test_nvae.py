"""Tests for the LSGM NVAE (lsgm_jax/models/nvae.py, nvae_layers.py).

Paper-size models are only traced (``jax.eval_shape``) to count the ``params``
collection; behaviour is checked on tiny configurations.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.models import nvae as N
from lsgm_jax.models import nvae_decoder_dist as D
from lsgm_jax.models import nvae_layers as L
from lsgm_jax.presets import nvae as nvae_presets

from tests.helpers import CHEAP_COMPILER_OPTIONS

TRAIN_MUTABLE = N.MUTABLE_COLLECTIONS


def _abstract_variables(cfg):
  model = N.NVAE(cfg)
  x = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.data_channels))
  rngs = {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}
  return jax.eval_shape(lambda: model.init(rngs, x, train=True))


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("name,make,expected,ftr0", [
    ("cifar10_vae1", lambda: nvae_presets.nvae_cifar10_config("vae1"), 100_867_740, (16, 16, 256)),
    ("cifar10_vae3", lambda: nvae_presets.nvae_cifar10_config("vae3"), 130_622_772, (16, 16, 512)),
    ("mnist", nvae_presets.nvae_mnist_config, 3_005_822, (8, 8, 128)),
    # NVlabs/LSGM's NVAE(args) for the two CelebA-HQ-256 README commands, built by its own
    # module constructors on CPU (torch 2.13, throwaway venv): sum of requires_grad numel.
    ("celebahq256_quantitative", lambda: nvae_presets.nvae_celebahq256_config("quantitative"),
     51_296_572, (32, 32, 256)),
    ("celebahq256_qualitative", lambda: nvae_presets.nvae_celebahq256_config("qualitative"),
     17_789_540, (64, 64, 128)),
])
def test_paper_param_counts(name, make, expected, ftr0):
  variables = _abstract_variables(make())
  assert _count(variables["params"]) == expected, name
  assert variables["params"]["prior_ftr0"].shape == ftr0
  # BatchNorm running statistics are state, not parameters.
  assert _count(variables["batch_stats"]) > 0


def test_celebahq256_config_is_the_preset_with_the_input_pyramid():
  """configs/lsgm_celebahq256.py builds the quantitative preset; its input pyramid holds
  the reference's 369,792 InputSkipCombinerCell parameters (two cells)."""
  from lsgm_jax import data
  from lsgm_jax.methods import lsgm as lsgm_method
  from tests.helpers import load_config
  for variant in ("vae", "lsgm"):
    config = load_config("lsgm_celebahq256", variant)
    cfg = lsgm_method.nvae_config(config.lsgm.vae, data.dataset_info(config.data))
    assert cfg == nvae_presets.nvae_celebahq256_config("quantitative"), variant
  params = _abstract_variables(nvae_presets.nvae_celebahq256_config())["params"]
  skips = {k: _count(v) for k, v in params.items() if k.startswith("enc_input_skip_")}
  assert skips == {"enc_input_skip_0": 74_112, "enc_input_skip_1": 295_680}
  with pytest.raises(ValueError, match="variant"):
    nvae_presets.nvae_celebahq256_config("paper")


def test_vae2_has_vae1_architecture():
  assert nvae_presets.nvae_cifar10_config("vae2") == nvae_presets.nvae_cifar10_config("vae1")
  assert nvae_presets.nvae_cifar10_config("vae1").decoder_out_channels == 100
  with pytest.raises(ValueError, match="variant"):
    nvae_presets.nvae_cifar10_config("vae4")


def test_config_validation():
  with pytest.raises(ValueError, match="channel_mult"):
    N.NVAEConfig(channel_mult=(1, 2, 2))
  with pytest.raises(ValueError, match="decoder_dist"):
    N.NVAEConfig(decoder_dist="gauss")
  with pytest.raises(ValueError, match="progressive_input_vae"):
    N.NVAEConfig(progressive_input_vae="input_residual")
  assert N.groups_per_scale(3, 8, True, 2) == (8, 4, 2)
  assert N.groups_per_scale(2, 5) == (5, 5)


# ----------------------------------------------------------------------------- tiny model

def _tiny(**kw):
  base = dict(image_size=8, data_channels=1, num_channels_enc=8, num_channels_dec=8,
              num_preprocess_blocks=1, num_postprocess_blocks=1, num_preprocess_cells=1,
              num_postprocess_cells=2, num_latent_scales=2, num_groups_per_scale=2,
              num_latent_per_group=3, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1,
              channel_mult=(1, 1, 2), arch_instance="res_mbconv", decoder_dist="bin")
  base.update(kw)
  return N.NVAEConfig(**base)


def _binary_digits(batch, size=8, channels=1, seed=0):
  rng = np.random.RandomState(seed)
  return jnp.asarray(np.where(rng.rand(batch, size, size, channels) > 0.5, 1.0, -1.0),
                     jnp.float32)


def _keys(*seeds):
  # "rbg" keys: XLA compiles RngBitGenerator far faster than unrolled threefry on CPU.
  return [jax.random.key(s, impl="rbg") for s in seeds]


# These tests are compile-bound (tiny NVAEs, one or two calls per program): XLA's cheap
# CPU settings cut their compile time; the numbers do not depend on them.
_CHEAP = CHEAP_COMPILER_OPTIONS


def test_tiny_forward_train_eval_and_sample():
  cfg = _tiny()
  model = N.NVAE(cfg)
  x = _binary_digits(4)
  k = _keys(0, 1, 2, 3, 4, 5)
  rngs = {"params": k[0], "sample": k[1]}
  variables = jax.jit(lambda r, xx: model.init(r, xx, train=True),
                      compiler_options=_CHEAP)(rngs, x)
  params = variables["params"]
  state = N.model_state(variables)
  assert set(state) == {"batch_stats", "spectral"}

  apply = jax.jit(model.apply, static_argnames=("train", "mutable", "method"),
                  compiler_options=_CHEAP)
  out, new_state = apply({"params": params, **state}, x, train=True,
                         rngs={"sample": k[2]}, mutable=TRAIN_MUTABLE)
  assert out.logits.shape == (4, 8, 8, 1)
  assert out.kl_per_group.shape == (4, cfg.num_groups)
  assert len(out.eps) == cfg.num_groups
  for eps, shape in zip(out.eps, cfg.latent_shapes()):
    assert eps.shape == (4,) + shape
  assert np.all(np.isfinite(out.kl_per_group))
  assert np.all(out.kl_per_group >= 0)  # analytic KL (no flows)
  ll = D.decoder_log_prob(cfg, out.logits, x)
  assert ll.shape == (4,) and np.all(np.isfinite(ll)) and np.all(ll <= 0)
  # BN statistics moved; spectral penalty and BN penalty are finite and positive.
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), state["batch_stats"],
                                 new_state["batch_stats"])
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  sn = N.spectral_norm_penalty(new_state["losses"])
  bn = N.batchnorm_penalty(params)
  assert np.isfinite(sn) and sn > 0
  assert np.isfinite(bn) and bn > 0

  # Eval mode: running statistics, nothing mutated.
  out_eval = apply({"params": params, **state}, x, train=False,
                         rngs={"sample": k[3]})
  assert np.all(np.isfinite(out_eval.kl_per_group))
  assert np.all(np.isfinite(D.decoder_log_prob(cfg, out_eval.logits, x)))

  # Prior sampling with temperature gives the data shape.
  sample = jax.jit(lambda v, r, t, e: model.apply(v, 3, t, e, method=N.NVAE.sample,
                                                  rngs={"sample": r}),
                   compiler_options=_CHEAP)
  logits = sample({"params": params, **state}, k[4], 0.7, None)
  img = D.decoder_sample(cfg, logits, jax.random.PRNGKey(5))
  assert img.shape == (3, 8, 8, 1)
  assert set(np.unique(np.asarray(img))) <= {-1.0, 1.0}
  assert D.decoder_mean(cfg, logits).shape == (3, 8, 8, 1)


def test_tiny_rgb_dml_flows_res_dist_gradients():
  cfg = _tiny(data_channels=3, decoder_dist="dml", num_mixture_dec=3, num_nf=1, res_dist=True,
              arch_instance="res_bnswish", ada_groups=True)
  assert cfg.groups_per_scale == (2, 1)
  model = N.NVAE(cfg)
  k = _keys(0, 1, 2)
  x = jnp.round(jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3)) * 255) / 127.5 - 1.0
  variables = jax.jit(model.init, compiler_options=_CHEAP)({"params": k[0], "sample": k[1]}, x)
  assert variables["params"]["image_conditional"]["kernel"].shape[-1] == 30

  def loss_fn(params):
    out, new = model.apply({**N.model_state(variables), "params": params}, x, train=True,
                           rngs={"sample": k[2]}, mutable=TRAIN_MUTABLE)
    assert out.kl_per_group.shape == (2, 3)
    nelbo = -D.decoder_log_prob(cfg, out.logits, x) + jnp.sum(out.kl_per_group, axis=1)
    return (jnp.mean(nelbo) + 1e-2 * N.spectral_norm_penalty(new["losses"])
            + 1e-2 * N.batchnorm_penalty(params))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn), compiler_options=_CHEAP)(variables["params"])
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  img = D.decoder_sample(cfg, jnp.zeros((1, 8, 8, 30)), jax.random.PRNGKey(0), 0.5)
  assert img.shape == (1, 8, 8, 3) and np.all(np.abs(img) <= 1)


# ----------------------------------------------------------------------------- distributions

@pytest.mark.parametrize("num_bits", [3, 5])
def test_disc_mix_logistic_normalised(num_bits):
  m = 4
  logits = 2.0 * jax.random.normal(jax.random.PRNGKey(num_bits), (1, 1, 1, 10 * m))
  grid = -1.0 + 2.0 * np.arange(2 ** num_bits) / (2 ** num_bits - 1)
  values = np.array(list(itertools.product(grid, repeat=3)), np.float32)  # all RGB triples
  x = jnp.asarray(values).reshape(-1, 1, 1, 3)
  lp = D.disc_mix_logistic_log_prob(jnp.broadcast_to(logits, (len(values), 1, 1, 10 * m)), x,
                                    num_mix=m, num_bits=num_bits)
  total = float(jnp.sum(jnp.exp(lp)))
  assert abs(total - 1.0) < 1e-3, total


def test_bernoulli_log_prob():
  logits = jnp.array([-3.0, -0.5, 0.0, 2.0])
  p = jax.nn.sigmoid(logits)
  np.testing.assert_allclose(D.bernoulli_log_prob(logits, jnp.ones(4)), np.log(p), rtol=1e-5)
  np.testing.assert_allclose(D.bernoulli_log_prob(logits, -jnp.ones(4)), np.log1p(-p), rtol=1e-5)


def test_normal_kl_closed_form():
  mu, ls = jnp.array([0.3, -1.0]), jnp.array([-0.2, 0.4])
  kl = N.normal_kl(mu, ls, jnp.zeros(2), jnp.zeros(2))
  np.testing.assert_allclose(kl, 0.5 * (mu ** 2 + jnp.exp(2 * ls) - 1) - ls, rtol=1e-5)
  np.testing.assert_allclose(N.normal_kl(mu, ls, mu, ls), 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- layers

def test_weight_norm_and_spectral_estimate():
  conv = L.WNConv(6, 3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
  variables = jax.jit(conv.init)(jax.random.PRNGKey(1), x)
  p = variables["params"]
  assert p["log_gain"].shape == (6,)
  state = {"spectral": variables["spectral"]}
  for _ in range(5):
    _, new = jax.jit(lambda v, xx: conv.apply(v, xx, mutable=["spectral", "losses"]))(
        {"params": p, **state}, x)
    state = {"spectral": new["spectral"]}
  w = np.exp(p["log_gain"]) * p["kernel"] / (
      np.sqrt(np.sum(p["kernel"] ** 2, axis=(0, 1, 2))) + 1e-5)
  sigma = np.linalg.svd(np.asarray(w).reshape(-1, 6), compute_uv=False)[0]
  np.testing.assert_allclose(N.spectral_norm_penalty(new["losses"]), sigma, rtol=1e-3)
  # Per output channel, the normalised kernel has norm exp(log_gain).
  np.testing.assert_allclose(np.sqrt(np.sum(w ** 2, axis=(0, 1, 2))), np.exp(p["log_gain"]),
                             rtol=1e-4)


def test_ar_flow_is_autoregressive():
  """Full Jacobian of both flow cells over a 4x4 latent grid: output (p, c) depends on
  input (p', c') only for pixels p' before p in raster order (after p in the mirrored
  cell) or, at p' = p, channels c' < c; the diagonal is 1 (volume preserving)."""
  h = w = c = 4
  cells = {False: L.CellAR(mirror=False), True: L.CellAR(mirror=True)}
  z = jax.random.normal(jax.random.PRNGKey(0), (1, h, w, c))

  def init(key):
    return {m: cell.init(jax.random.fold_in(key, m), z) for m, cell in cells.items()}
  variables = jax.jit(init)(jax.random.PRNGKey(1))
  for v in variables.values():  # larger mu weights than the 0.1 init: clear non-zeros
    v["params"]["mu"]["log_gain"] = v["params"]["mu"]["log_gain"] + 2.0

  def jacobians(variables, z):
    return {m: jax.jacfwd(lambda zz: cell.apply(variables[m], zz)[0].reshape(-1))(z)
            for m, cell in cells.items()}
  jacs = jax.jit(jacobians)(variables, z)
  order = np.arange(h * w)  # raster index row * w + col
  for mirror, jac in jacs.items():
    jac = np.asarray(jac).reshape(h * w, c, h * w, c)  # [p, c, p', c']
    later = order[None, :] > order[:, None]  # [p, p']: p' after p in raster order
    future = later.T if mirror else later
    past = ~future & ~np.eye(h * w, dtype=bool)
    np.testing.assert_array_equal(jac[future.nonzero()[0], :, future.nonzero()[1], :], 0.0)
    same = jac[order, :, order, :]  # [p, c, c']
    np.testing.assert_array_equal(np.triu(same, 1), np.zeros_like(same))
    np.testing.assert_allclose(np.diagonal(same, axis1=1, axis2=2), 1.0, atol=1e-6)
    # Not vacuous: every lower channel entry and every visible 3x3 neighbour is used.
    assert np.all(np.abs(same).mean(0)[np.tril_indices(c, -1)] > 1e-4)
    near = [(p, q) for p in range(h * w) for q in range(h * w) if past[p, q]
            and abs(p // w - q // w) <= 1 and abs(p % w - q % w) <= 1]
    assert len(near) == 42  # the 8-neighbour pairs of a 4x4 grid, one direction each
    assert all(np.abs(jac[p, :, q, :]).max() > 1e-4 for p, q in near), mirror


def test_upsample_align_corners():
  x = jnp.arange(3.0).reshape(1, 3, 1, 1) * jnp.ones((1, 1, 2, 1))
  y = L.upsample2x_bilinear(x)
  np.testing.assert_allclose(y[0, :, 0, 0], np.linspace(0, 2, 6), rtol=1e-6)
