"""The CPU-friendly convolution gradient (lsgm_jax/models/conv.py): same values as lax's,
and inside a scanned loop XLA:CPU gets only canonical (fast) convolutions."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lsgm_jax.models import conv
from tests.helpers import CHEAP_COMPILER_OPTIONS

_DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("kernel, padding", [
    (3, "SAME"), (1, "VALID"), (3, "VALID"), (5, "SAME"), (4, ((1, 2), (2, 1))),
    (3, ((0, 2), (2, 0)))])
def test_gradients_equal_lax(kernel, padding):
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 7, 6, 3))
  w = jax.random.normal(kw, (kernel, kernel, 3, 5))

  def loss(f):
    def value(x, w):
      y = f(x, w, (1, 1), padding, dimension_numbers=_DN)
      return jnp.sum(y * jax.random.normal(kd, y.shape))
    return value

  with conv.canonical_cpu_gradients():
    ours = jax.jit(jax.value_and_grad(loss(conv.conv_general_dilated), (0, 1)))(x, w)
  ref = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1)))(x, w)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_custom_gradient_only_where_enabled():
  """Inside ``canonical_cpu_gradients`` eligible convolutions carry the custom VJP; other
  convolutions, and every convolution outside it, are lax's, so forward mode
  (the likelihood's ``jax.jvp``) still works there."""
  x = jnp.ones((1, 8, 8, 2))
  w = jnp.ones((3, 3, 2, 4))

  def jaxpr_of(**kwargs):
    args = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=_DN) | kwargs
    return str(jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(x, w, **args))(x, w))

  with conv.canonical_cpu_gradients():
    assert "custom_vjp" in jaxpr_of()
    for kwargs in [dict(window_strides=(2, 2)), dict(rhs_dilation=(2, 2)),
                   dict(padding=((3, 3), (3, 3)))]:
      assert "custom_vjp" not in jaxpr_of(**kwargs)
  assert "custom_vjp" not in jaxpr_of()
  f = lambda x: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)
  _, tangent = jax.jvp(f, (x,), (x,))
  np.testing.assert_allclose(tangent, f(x), rtol=1e-6)  # linear in x


def test_scanned_gradient_has_only_canonical_convolutions_on_cpu():
  """XLA:CPU runs a convolution with its fast kernel only as NHWC x HWIO -> NHWC
  (dim_labels b01f_01io->b01f); lax's own backward convolutions inside a while body stay
  non-canonical (a naive loop, ~50x slower on 2 cores)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU branch of the gradient")

  def dim_labels(f):
    def loss(w, x):
      def block(h, wi):
        return jax.nn.relu(f(h, wi, (1, 1), "SAME", dimension_numbers=_DN)), None
      return jnp.sum(lax.scan(block, x, w)[0] ** 2)
    w = jnp.ones((2, 3, 3, 8, 8))
    x = jnp.ones((2, 6, 6, 8))
    with conv.canonical_cpu_gradients():
      lowered = jax.jit(jax.grad(loss)).lower(w, x)
    text = lowered.compile(CHEAP_COMPILER_OPTIONS).as_text()
    return set(re.findall(r"dim_labels=(\S+?)[,}\s]", text))

  assert dim_labels(conv.conv_general_dilated) == {"b01f_01io->b01f"}
  assert dim_labels(lax.conv_general_dilated) != {"b01f_01io->b01f"}  # the defect it fixes


def test_the_update_step_takes_the_custom_gradient():
  """``train_state.make_update_step`` traces its gradient inside
  ``canonical_cpu_gradients``: without it the scanned models' steps run ~10x slower on
  CPU (BENCHMARKS.md)."""
  import optax
  from lsgm_jax.train_state import create_train_state, make_update_step

  def loss(params, model_state, batch, rng, step):
    del rng, step
    y = conv.conv_general_dilated(batch, params["w"], (1, 1), "SAME", dimension_numbers=_DN)
    value = jnp.mean(y ** 2)
    return value, ({}, model_state)

  tx = optax.sgd(0.1)
  state = create_train_state({"w": jnp.ones((3, 3, 2, 2))}, {}, tx, jax.random.key(0))
  jaxpr = str(jax.make_jaxpr(make_update_step(loss, tx))(state, jnp.ones((1, 4, 4, 2))))
  assert "platform_index" in jaxpr  # the custom backward's CPU / other-platform switch
