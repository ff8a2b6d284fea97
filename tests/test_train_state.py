"""The family-independent update: accumulation, clipping, EMA, compute dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsgm_jax.train_state import create_train_state, make_update_step


def linear_loss(params, model_state, batch, rng, step):
  """A deterministic least-squares loss: microbatching must not change its gradient."""
  del rng, step
  pred = batch["x"] @ params["w"] + params["b"]
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, ({"loss/mse": loss}, model_state)


def problem():
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(32, 3)).astype(np.float32),
           "y": rng.normal(size=(32, 2)).astype(np.float32)}
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros((2,))}
  return params, batch


def test_accumulated_microbatches_equal_the_full_batch_update():
  params, batch = problem()
  tx = optax.sgd(0.1)
  state = create_train_state(params, {}, tx, jax.random.PRNGKey(0))
  full, m_full = jax.jit(make_update_step(linear_loss, tx, ema_decay=0.5))(state, batch)
  micro, m_micro = jax.jit(make_update_step(linear_loss, tx, num_microbatches=4,
                                            ema_decay=0.5))(state, batch)
  np.testing.assert_allclose(micro.params["w"], full.params["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(m_micro["grad_norm"]), float(m_full["grad_norm"]), rtol=1e-6)
  # EMA after one step: 0.5 * old + 0.5 * new.
  np.testing.assert_allclose(full.ema_params["w"], 0.5 * params["w"] + 0.5 * full.params["w"],
                             rtol=1e-6)


def test_clipping_scales_the_update_to_the_clip_norm():
  params, batch = problem()
  tx = optax.sgd(1.0)
  state = create_train_state(params, {}, tx, jax.random.PRNGKey(0))
  new, metrics = jax.jit(make_update_step(linear_loss, tx, grad_clip=1e-3))(state, batch)
  delta = jax.tree.map(lambda a, b: a - b, new.params, params)
  assert float(metrics["grad_norm"]) > 1e-3
  np.testing.assert_allclose(float(optax.tree.norm(delta)), 1e-3, rtol=1e-4)


def test_skip_threshold_skips_large_steps_and_counts_them():
  params, batch = problem()
  tx = optax.adam(0.1)
  state = create_train_state(params, {}, tx, jax.random.PRNGKey(0))
  step = jax.jit(make_update_step(linear_loss, tx, skip_threshold=1e-6))
  new, metrics = step(state, batch)
  assert float(metrics["skipped"]) == 1.0 and int(new.num_skipped) == 1
  np.testing.assert_array_equal(new.params["w"], params["w"])
  assert int(new.opt_state[0].count) == 0  # Adam's count untouched


def test_bfloat16_compute_keeps_float32_params():
  params, batch = problem()
  tx = optax.sgd(0.1)
  state = create_train_state(params, {}, tx, jax.random.PRNGKey(0))
  seen = []

  def spy_loss(p, model_state, batch, rng, step):
    seen.append(p["w"].dtype)
    return linear_loss(p, model_state, batch, rng, step)

  full, _ = jax.jit(make_update_step(spy_loss, tx))(state, batch)
  half, _ = jax.jit(make_update_step(spy_loss, tx, compute_dtype=jnp.bfloat16))(state, batch)
  assert seen == [jnp.float32, jnp.bfloat16]  # the loss ran on bfloat16 weights
  assert half.params["w"].dtype == jnp.float32 and half.params["b"].dtype == jnp.float32
  # The update itself (new - old) agrees to bfloat16's precision (8 mantissa bits: ~0.4%
  # per rounding); half a gradient or a doubled one is off by 50% / 100%.
  for k in ("w", "b"):
    d_full = np.asarray(full.params[k]) - np.asarray(params[k])
    d_half = np.asarray(half.params[k]) - np.asarray(params[k])
    assert np.max(np.abs(d_full)) > 1e-2
    np.testing.assert_allclose(d_half, d_full, rtol=1e-2, atol=1e-2 * np.max(np.abs(d_full)))
  assert not np.array_equal(np.asarray(half.params["w"]), np.asarray(full.params["w"]))
