"""Tests of the score networks: pinned parameter counts, shapes, dtypes, init behaviour.

Paper-size models are only traced with ``jax.eval_shape`` (no allocation, no compute);
forward passes use tiny configurations so the file runs in well under a minute on CPU.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.models import fir, layers
from lsgm_jax.models.mlp import ScoreMLP
from lsgm_jax.models.ncsnpp import NCSNpp, to_unrolled_params
from lsgm_jax.presets.ncsnpp import cld_cifar10_config, lsgm_cifar10_config, lsgm_mnist_config
from lsgm_jax.models.unet import UNet


def _normal(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
  """Standard-normal test input from NumPy (an eager threefry draw compiles for seconds)."""
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


def _count_params(model, *inputs) -> int:
  """Trainable parameter count of ``model`` via ``jax.eval_shape`` (nothing allocated)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


# ------------------------------------------------------------------------ MLP

def test_cld_toy_mlp_param_count():
  # CLD-SGM configs/default_toy_data.txt: (x, v, t) -> 128 x4 -> 2 (REFERENCE_NOTES.md).
  model = ScoreMLP(hidden=128, num_hidden_layers=4, out_dim=2, time_input="raw")
  assert _count_params(model, jnp.zeros((2, 4)), jnp.zeros((2,))) == 50_562


@pytest.mark.parametrize("time_input,dtype", [("raw", jnp.float32), ("fourier", jnp.bfloat16),
                                              ("positional", jnp.float32)])
def test_mlp_forward(time_input, dtype):
  model = ScoreMLP(hidden=32, num_hidden_layers=2, time_input=time_input, dtype=dtype)
  x = _normal((5, 2), seed=1)
  t = jnp.linspace(0.01, 1.0, 5)
  variables = model.init(jax.random.PRNGKey(0), x, t)
  # Fourier frequencies are non-trainable model state (layers.FOURIER_COLLECTION).
  assert set(variables) == ({"params", "constants"} if time_input == "fourier" else {"params"})
  out = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert out.shape == (5, 2) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  # The time input matters.
  out2 = model.apply(variables, x, t * 0.5)
  assert not np.allclose(np.asarray(out), np.asarray(out2))


def test_mlp_rejects_unknown_time_input():
  model = ScoreMLP(time_input="learned")
  with pytest.raises(ValueError, match="time_input"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))


# ------------------------------------------------------------------ helpers

# XLA:CPU compile time dominates this file; skipping LLVM's expensive optimisations
# roughly halves it and the tiny models run in milliseconds either way.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compiled(fn, *args):
  """``jax.jit(fn)`` compiled for ``args`` with the cheap XLA:CPU options."""
  return jax.jit(fn).lower(*args).compile(_FAST_COMPILE)


def _random_params(model, *inputs, scale: float = 0.2, seed: int = 0):
  """Parameters with the model's tree but filled from NumPy (no init compile).

  ``model.init`` under jit spends ~10 s compiling the per-parameter PRNG on a loaded
  CPU, so shape / dtype / finiteness tests use random-filled trees from ``eval_shape``.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
  rs = np.random.RandomState(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rs.standard_normal(s.shape) * scale, s.dtype), shapes)


def _upfirdn_numpy(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]):
  """Direct StyleGAN2 upfirdn2d on one [H, W] channel: zero-insert, pad (crop where a pad
  is negative), convolve, subsample."""
  h, w = x.shape
  u = np.zeros((h * up, w * up), x.dtype)
  u[::up, ::up] = x
  p = np.pad(u, [(max(pad[0], 0), max(pad[1], 0))] * 2)
  lo, hi = max(-pad[0], 0), max(-pad[1], 0)
  p = p[lo:p.shape[0] - hi, lo:p.shape[1] - hi]
  kf = k[::-1, ::-1]
  kh, kw = k.shape
  out = np.array([[np.sum(p[i:i + kh, j:j + kw] * kf) for j in range(p.shape[1] - kw + 1)]
                  for i in range(p.shape[0] - kh + 1)])
  return out[::down, ::down]


# ------------------------------------------------------------------ layers

def test_fir_resampling_matches_direct_upfirdn2d():
  x = np.random.RandomState(0).standard_normal((1, 6, 6, 2)).astype(np.float32)
  k1 = np.array([1.0, 3.0, 3.0, 1.0])
  k2 = np.outer(k1, k1) / np.sum(np.outer(k1, k1))
  up = np.asarray(fir.upsample_2d(jnp.asarray(x)))
  down = np.asarray(fir.downsample_2d(jnp.asarray(x)))
  assert up.shape == (1, 12, 12, 2) and down.shape == (1, 3, 3, 2)
  for c in range(2):
    np.testing.assert_allclose(up[0, :, :, c], _upfirdn_numpy(x[0, :, :, c], k2 * 4, 2, 1, (2, 1)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(down[0, :, :, c], _upfirdn_numpy(x[0, :, :, c], k2, 1, 2, (1, 1)),
                               rtol=1e-5, atol=1e-5)
  # Gain: a constant image stays constant away from the borders.
  const = fir.upsample_2d(jnp.ones((1, 8, 8, 1)))
  np.testing.assert_allclose(np.asarray(const)[0, 2:-2, 2:-2, 0], 1.0, rtol=1e-6)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_fused_fir_conv_with_identity_kernel_equals_plain_fir(direction):
  # With a centred delta kernel the fused conv must reduce to the plain FIR resampler,
  # which pins the padding / orientation of the StyleGAN2 fused ops.
  x = _normal((2, 8, 8, 3), seed=0)
  conv = layers.Conv2d(3, 3, up=direction == "up", down=direction == "down")
  delta = np.zeros((3, 3, 3, 3), np.float32)
  for c in range(3):
    delta[1, 1, c, c] = 1.0
  variables = {"params": {"kernel": jnp.asarray(delta), "bias": jnp.zeros((3,))}}
  got = conv.apply(variables, x)
  want = fir.upsample_2d(x) if direction == "up" else fir.downsample_2d(x)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("taps,gain,up,down,pad", [
    ((1, 3, 3, 1), 4.0, 2, 1, (2, 1)), ((1, 3, 3, 1), 1.0, 1, 2, (1, 1)),
    ((1, 3, 3, 1), 1.0, 1, 2, (2, 2)), ((1, 3, 3, 1), 4.0, 1, 1, (1, 0)),
    ((1, 1), 4.0, 2, 1, (0, 0)), ((1, 2, 1), 9.0, 3, 1, (3, -1)),
    ((1, 4, 6, 4, 1), 1.0, 1, 2, (-1, 2))])
def test_separable_fir_equals_the_depthwise_convolution(taps, gain, up, down, pad):
  """upfirdn2d's strided-slice passes (the fast form) equal the direct definition for
  every up / down / pad (negative pads crop), and the depthwise convolution where its pads
  are non-negative (XLA's CPU grouped convolution returns garbage for a negative pad
  with a stride, one more reason not to use it); a non-separable kernel is detected."""
  x = _normal((2, 7, 7, 3), seed=1)
  kernel = fir.fir_kernel(taps, gain)
  got = np.asarray(fir.upfirdn2d(x, kernel, up, down, pad))
  for c in range(3):
    want = _upfirdn_numpy(np.asarray(x)[1, :, :, c], kernel, up, down, pad)
    np.testing.assert_allclose(got[1, :, :, c], want, rtol=1e-5, atol=1e-5)
  if min(pad) >= 0:
    conv = fir.upfirdn2d_depthwise(x, kernel, up, down, pad)
    np.testing.assert_allclose(got, np.asarray(conv), rtol=1e-5, atol=1e-5)
  assert fir._separable_taps(np.arange(9.0).reshape(3, 3) ** 2) is None


@pytest.mark.parametrize("ks,taps", [(3, (1, 3, 3, 1)), (1, (1, 3, 3, 1)), (5, (1, 3, 3, 1)),
                                     (3, (1, 1))])
def test_fused_upsampling_conv_equals_transposed_conv_then_fir(ks, taps):
  """fir_upsample_conv (FIR upsampling, then an ordinary convolution) equals StyleGAN2's
  order: a stride-2 transposed convolution (``lhs_dilation``), then the FIR filter."""
  x, w = _normal((2, 5, 5, 3), seed=2), _normal((ks, ks, 3, 4), seed=3)
  kernel = fir.fir_kernel(taps, 4.0)
  t = jax.lax.conv_general_dilated(x, w, (1, 1), [(ks - 1, ks - 1)] * 2, lhs_dilation=(2, 2),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  p = (kernel.shape[0] - 2) - (ks - 1)
  want = fir.upfirdn2d_depthwise(t, kernel, pad=((p + 1) // 2 + 1, p // 2 + 1))
  got = fir.fir_upsample_conv(x, w, kernel, 2)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_group_count_adapts_to_small_channels():
  assert layers.num_groups_for(128) == 32 and layers.num_groups_for(512) == 32
  assert layers.num_groups_for(16) == 4 and layers.num_groups_for(2) == 1
  assert all(c % layers.num_groups_for(c) == 0 for c in range(1, 300))


def test_fourier_frequencies_are_fixed_constants():
  """The NCSN++ Fourier features are [sin(2 pi t W), cos(2 pi t W)] with W pinned here
  (16 N(0, 1) draws of NumPy seed 0 times scale 16). W is the non-trainable variable
  ``constants/W`` (model state, so ``--mode=import`` can set the reference's), never a
  param; without that collection the module uses the same seed constants."""
  proj = layers.GaussianFourierProjection(embedding_size=8, scale=16.0)
  variables = proj.init(jax.random.PRNGKey(0), jnp.ones((2,)))
  assert set(variables) == {"constants"}  # nothing trainable
  pinned_w = np.array([28.224838, 6.4025154, 15.659808, 35.85429, 29.880928, -15.636446,
                       15.201415, -2.4217153], np.float64)
  np.testing.assert_allclose(proj.frequencies(), pinned_w, rtol=1e-6)
  np.testing.assert_allclose(variables["constants"]["W"], pinned_w, rtol=1e-6)
  np.testing.assert_array_equal(proj.apply({}, jnp.array([0.3])),
                                proj.apply(variables, jnp.array([0.3])))
  moved = proj.apply({"constants": {"W": jnp.full((8,), 0.25)}}, jnp.array([1.0]))
  np.testing.assert_allclose(moved[0], [1.0] * 8 + [0.0] * 8, atol=1e-6)  # sin/cos(pi/2)
  emb = np.asarray(proj.apply(variables, jnp.array([0.0, 0.5])), np.float64)
  assert emb.shape == (2, 16)
  np.testing.assert_allclose(emb[0], [0.0] * 8 + [1.0] * 8, atol=1e-6)
  # At t = 0.5 the argument is pi W (up to ~113 rad): float32 keeps ~1e-5 of it.
  arg = 2.0 * np.pi * 0.5 * pinned_w
  np.testing.assert_allclose(emb[1], np.concatenate([np.sin(arg), np.cos(arg)]), atol=1e-4)
  # NCSN++ uses this layer with seed 0: the same constants, whatever the model's seed.
  assert layers.GaussianFourierProjection().seed == 0


# ------------------------------------------------------------------ U-Net

def test_ddpm_unet_param_counts():
  x, t = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))
  cfg = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
  # score_sde configs/vp/ddpm/cifar10_continuous.py (one attention per level on the way up).
  assert _count_params(UNet(**cfg), x, t) == 35_218_947
  # Ho et al. (2020) diffusion_tf: attention after every up block; the paper's "35.7M".
  assert _count_params(UNet(**cfg, attn_every_up_block=True), x, t) == 35_746_307


def test_small_unet_on_digits_forward():
  model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.3)
  x = _normal((4, 8, 8, 1), seed=0)
  t = jnp.linspace(0.1, 1.0, 4)
  params = _random_params(model, x, t)
  out = _compiled(model.apply, params, x, t)(params, x, t)
  assert out.shape == (4, 8, 8, 1) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).mean()) > 1e-3


def test_residual_block_dropout_only_in_training():
  block = layers.ResnetBlockBigGAN(out_ch=8, down=True, dropout=0.5, init_scale=1.0)
  x = _normal((2, 8, 8, 4), seed=0)
  temb = jnp.ones((2, 16))
  params = _random_params(block, x, temb)
  # rbg keys: a threefry dropout mask costs ~8 s of XLA compile on a loaded CPU.
  key = lambda seed: jax.random.key(seed, impl="rbg")  # noqa: E731
  train = _compiled(lambda p, k: block.apply(p, x, temb, train=True, rngs={"dropout": k}),
                    params, key(0))
  out1, out2 = train(params, key(1)), train(params, key(2))
  assert out1.shape == (2, 4, 4, 8)
  assert not np.allclose(np.asarray(out1), np.asarray(out2))
  np.testing.assert_array_equal(np.asarray(out1), np.asarray(train(params, key(1))))
  # Outside training no dropout rng is needed.
  assert jax.eval_shape(lambda p: block.apply(p, x, temb), params).shape == (2, 4, 4, 8)


def test_unet_out_channels_and_bf16_shapes():
  """bfloat16 compute: float32 parameters, every layer's output in bfloat16 except the
  time embedding (float32 like the references) and the final cast to float32."""
  model = UNet(out_channels=2, dtype=jnp.bfloat16)
  x, t = jnp.zeros((2, 16, 16, 3)), jnp.ones((2,))

  def run():
    variables = model.init(jax.random.PRNGKey(0), x, t)
    out, inter = model.apply(variables, x, t, capture_intermediates=True,
                             mutable=["intermediates"])
    return variables["params"], out, inter["intermediates"]
  params, out, inter = jax.eval_shape(run)
  assert out.shape == (2, 16, 16, 2) and out.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  dtypes = {jax.tree_util.keystr(path): leaf.dtype
            for path, leaf in jax.tree_util.tree_flatten_with_path(inter)[0]}
  float32 = sorted(k for k, d in dtypes.items() if d == jnp.float32)
  assert float32 == ["['__call__'][0]", "['temb_0']['__call__'][0]",
                     "['temb_1']['__call__'][0]"]
  assert sum(d == jnp.bfloat16 for d in dtypes.values()) > 50


# ------------------------------------------------------------------ NCSN++

def test_cld_ncsnpp_cifar10_param_count():
  # CLD-SGM default_cifar10.txt + specific_cifar10.txt (REFERENCE_NOTES.md); the 128 fixed
  # Fourier frequencies are non-trainable model state (constants/fourier/W), not params.
  model = NCSNpp(**cld_cifar10_config())
  x, t = jnp.zeros((1, 32, 32, 6)), jnp.ones((1,))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))
  assert set(shapes) == {"params", "constants"}
  assert shapes["constants"]["fourier"]["W"].shape == (128,)
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"])) == 107_593_859
  # 8 down + 1 up + 1 middle (counted in the unrolled layout: scan_blocks stacks runs).
  unrolled = jax.eval_shape(to_unrolled_params, shapes["params"])
  assert sum("attn" in name for name in unrolled) == 10


def test_lsgm_score_model_param_counts():
  # NVlabs/LSGM score_sde/ncsnpp.py with the README commands; the counts include the
  # trainable per-channel mixing logit (180 / 40 entries), as the reference does.
  cifar = NCSNpp(**lsgm_cifar10_config())
  x, t = jnp.zeros((1, 16, 16, 180)), jnp.ones((1,))
  shapes = jax.eval_shape(lambda: cifar.init(jax.random.PRNGKey(0), x, t))
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"])) == 375_561_064
  assert shapes["params"]["mixing_logit"].shape == (180,)
  mnist = NCSNpp(**lsgm_mnist_config())
  assert _count_params(mnist, jnp.zeros((1, 8, 8, 40)), t) == 63_774_544


def _tiny_ncsnpp(**overrides) -> NCSNpp:
  cfg = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1,
             in_channels=6, out_channels=3)
  cfg.update(overrides)
  return NCSNpp(**cfg)


_X = _normal((2, 8, 8, 6), seed=0)
_T = jnp.array([0.05, 0.9])


# One tiny model (init_scale=0, as in the references) and one compiled float32 apply,
# shared by the forward and the init-scale tests: compiles dominate this file's runtime.
_TINY = _tiny_ncsnpp(init_scale=0.0)
_TINY_APPLY = []  # filled lazily with the compiled float32 apply


def _tiny_apply(params, x, t):
  if not _TINY_APPLY:
    _TINY_APPLY.append(_compiled(_TINY.apply, params, x, t))
  return _TINY_APPLY[0](params, x, t)


def test_tiny_ncsnpp_forward_float32_and_bfloat16():
  params = _random_params(_TINY, _X, _T, scale=0.1)
  out32 = _tiny_apply(params, _X, _T)
  tiny_bf16 = _tiny_ncsnpp(init_scale=0.0, dtype=jnp.bfloat16)
  out16 = _compiled(tiny_bf16.apply, params, _X, _T)(params, _X, _T)
  for out in (out32, out16):
    assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
  out32, out16 = np.asarray(out32), np.asarray(out16)
  assert np.abs(out32).mean() > 1e-2
  # bf16 computation tracks float32 to bf16 precision (and is really in bf16).
  err = np.abs(out16 - out32).mean() / np.abs(out32).mean()
  assert 0 < err < 0.1


@pytest.mark.parametrize("overrides", [
    dict(progressive="output_skip", progressive_input="input_skip"),
    dict(progressive="residual", progressive_input="input_skip", progressive_combine="cat"),
    dict(progressive="residual", progressive_input="none", fir=False),
    dict(resblock_type="ddpm", fir=True),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=False),
    dict(embedding_type="positional", remat=True, out_channels=None),
    dict(embedding_dim=8, mixing_logit_init=-3.0, ch_mult=(1, 2, 2)),
])
def test_ncsnpp_variants_shapes(overrides):
  model = _tiny_ncsnpp(**overrides)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _X, _T))
  out = jax.eval_shape(lambda v: model.apply(v, _X, _T, train=True,
                                            rngs={"dropout": jax.random.PRNGKey(0)}), variables)
  want_ch = model.out_channels or _X.shape[-1]
  assert out.shape == (2, 8, 8, want_ch) and out.dtype == jnp.float32


def test_ncsnpp_remat_keeps_parameter_names():
  names = lambda m: jax.tree_util.tree_structure(  # noqa: E731
      jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), _X, _T)))
  assert names(_tiny_ncsnpp()) == names(_tiny_ncsnpp(remat=True))


def test_ncsnpp_rejects_bad_config():
  with pytest.raises(ValueError, match="progressive_input"):
    jax.eval_shape(lambda: _tiny_ncsnpp(progressive_input="skip").init(
        jax.random.PRNGKey(0), _X, _T))
  with pytest.raises(ValueError, match="in_channels"):
    jax.eval_shape(lambda: _tiny_ncsnpp(in_channels=3).init(jax.random.PRNGKey(0), _X, _T))


def test_init_scale_zero_zero_inits_the_output_layers():
  # init_scale=0 (CLD-SGM / LSGM) must zero the last conv of every residual block, the
  # output projection of every attention block and the output conv -- and nothing else.
  # An rbg key: the threefry init would take far longer to compile on CPU.
  key = jax.random.key(0, impl="rbg")
  variables = _compiled(_TINY.init, key, _X, _T)(key, _X, _T)
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  kernels = {k: float(np.abs(np.asarray(v)).max()) for k, v in flat.items()
             if k.endswith("kernel")}
  expect_zero = {k for k in kernels
                 if "/conv_1/" in k or "attn" in k and "/out/" in k or k.startswith("conv_out/")}
  # 10 residual blocks (3 down incl. the resampling one, 2 middle, 5 up), 3 attention
  # blocks at 8x8 (down, middle, up) and the output conv.
  assert len(expect_zero) == 10 + 3 + 1
  for k, m in kernels.items():
    if k in expect_zero:
      assert m < 1e-4, k
    else:
      assert m > 1e-2, k
  # Behaviour: the network starts as (numerically) the zero function.
  # (The references use scale 1e-10 for 0, so kernels are ~1e-5, not exactly 0.)
  out = _tiny_apply(variables, _X, _T)
  assert float(jnp.abs(out).max()) < 1e-3
