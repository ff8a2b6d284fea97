"""Model-FLOP counting on jaxprs and MFU (lsgm_jax/flops.py), against hand counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from lsgm_jax import flops


def test_matmul_conv_scan_and_gradient_flops_by_hand():
  a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
  assert flops.jaxpr_flops(lambda x, y: x @ y, a, b) == 2 * 3 * 4 * 5

  def conv(x, w, groups=1):
    return jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jnp.ones((2, 8, 8, 6))
  # stride 2 SAME: 4x4 outputs, 16 channels, each 3*3*6 multiply-adds.
  assert flops.jaxpr_flops(conv, x, jnp.ones((3, 3, 6, 16))) == 2 * 2 * 4 * 4 * 16 * 54
  # grouped: each output sees 6/3 input channels.
  assert flops.jaxpr_flops(lambda x, w: conv(x, w, 3), x,
                           jnp.ones((3, 3, 2, 12))) == 2 * 2 * 4 * 4 * 12 * 18

  def chain(x, w):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=7)[0]
  square = jnp.ones((4, 4))
  assert flops.jaxpr_flops(chain, a, square) == 7 * 2 * 3 * 4 * 4
  # Inside jit, and the backward pass: d/dA and d/dB of sum(A @ B) are two more matmuls
  # (the forward product itself is dead code once only the gradient is kept).
  assert flops.jaxpr_flops(jax.jit(lambda x, y: x @ y), a, b) == 120
  assert flops.jaxpr_flops(jax.grad(lambda x, y: jnp.sum(x @ y), argnums=(0, 1)), a, b) \
      == 3 * 120


def test_abstract_inputs_and_a_cond_counts_its_costliest_branch():
  s = jax.ShapeDtypeStruct((8, 8), jnp.float32)

  def f(p, x):
    return jax.lax.cond(p, lambda: x @ x @ x, lambda: x @ x)
  assert flops.jaxpr_flops(f, jax.ShapeDtypeStruct((), jnp.bool_), s) == 2 * 2 * 8 ** 3


def test_mfu_uses_the_peak_of_the_arithmetic_in_use():
  assert flops.arithmetic("NVIDIA H200", "bfloat16") == "bfloat16"
  assert flops.arithmetic("NVIDIA H200", "float32") == "tf32"  # default precision
  assert flops.arithmetic("TPU v4", "float32") == "bfloat16"
  util = flops.utilisation(14.3e12, 10.0, 1, "NVIDIA H200", "bfloat16")
  assert util["tflops_per_device"] == pytest.approx(143.0)
  assert util["mfu"] == pytest.approx(143.0 / 989.4)
  assert flops.utilisation(1e12, 1.0, 2, "cpu", "float32") == {
      "tflops_per_device": 0.5, "mfu": None}
  with jax.default_matmul_precision("highest"):
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 19.5
