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


def _nan_on_step(loss_fn, bad_steps):
  """``loss_fn`` whose loss and gradients are NaN on the given steps (the skip guard
  must keep NaN out of the moments)."""
  def wrapped(params, model_state, batch, rng, step):
    loss, aux = loss_fn(params, model_state, batch, rng, step)
    bad = jnp.isin(step, jnp.asarray(bad_steps))
    return loss * jnp.where(bad, jnp.nan, 1.0), aux
  return wrapped


def test_guarded_adam_equals_optax_with_the_skip_guard_bit_for_bit():
  """``optim.GuardedAdam.apply_if`` (in place, skip guard folded in) gives exactly the
  params, EMA and optimizer state of optax's update + apply_updates + per-leaf select,
  for Adam and AdamW, on good and skipped steps, with and without the CPU ordering."""
  import ml_collections
  from lsgm_jax import optim

  params, batch = problem()
  loss = _nan_on_step(linear_loss, [2, 3])
  for name, wd in (("adam", 0.0), ("adamw", 0.05)):
    cfg = ml_collections.ConfigDict(dict(
        optimizer=name, lr=1e-2, warmup_steps=3, schedule="cosine", min_lr_ratio=0.1,
        beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=wd))
    guarded = optim.make_optimizer(cfg, num_train_steps=10)
    assert isinstance(guarded, optim.GuardedAdam)
    plain = optax.GradientTransformation(guarded.init, guarded.update)  # generic path
    runs = {}
    for label, tx, materialize in (("optax", plain, False), ("in_place", guarded, False),
                                   ("cpu_ordered", guarded, True)):
      state = create_train_state(jax.tree.map(jnp.copy, params), {}, tx,
                                 jax.random.PRNGKey(0))
      step = jax.jit(make_update_step(loss, tx, ema_decay=0.9, materialize=materialize),
                     donate_argnums=0)
      skipped = []
      for _ in range(6):
        state, metrics = step(state, batch)
        skipped.append(float(metrics["skipped"]))
      assert skipped == [0, 0, 1, 1, 0, 0]
      runs[label] = jax.device_get(state)
    for label in ("in_place", "cpu_ordered"):
      for a, b in zip(jax.tree.leaves(runs[label]), jax.tree.leaves(runs["optax"])):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} {label}")
    assert (jax.tree.structure(runs["in_place"].opt_state)
            == jax.tree.structure(runs["optax"].opt_state))
    assert int(runs["in_place"].opt_state[0].count) == 4  # skipped steps not counted


def test_guarded_adam_updates_the_donated_state_in_place_on_cpu():
  """XLA:CPU copies each donated params / moments leaf out of the way when the update is
  written as optax writes it (1.2 GiB per paper NCSN++ step); the guarded update copies
  none of them (only scalar counters)."""
  import re

  import ml_collections
  from lsgm_jax import optim

  params = {f"w{i}": jnp.ones((64, 32 + i)) for i in range(4)}

  def loss(p, model_state, batch, rng, step):
    del batch, rng, step
    value = sum(jnp.sum(jnp.sin(x)) for x in p.values())
    return value, ({}, model_state)

  cfg = ml_collections.ConfigDict(dict(
      optimizer="adam", lr=1e-2, warmup_steps=0, schedule="constant", min_lr_ratio=0.1,
      beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0))
  guarded = optim.make_optimizer(cfg, num_train_steps=10)

  def copied_state_arrays(tx):
    state = create_train_state(params, {}, tx, jax.random.PRNGKey(0))
    step = jax.jit(make_update_step(loss, tx, materialize=True), donate_argnums=0)
    hlo = step.lower(state, {}).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    return re.findall(r"= f32\[[\d,]+\]\S* copy\(%state", entry)

  assert copied_state_arrays(guarded) == []
  assert len(copied_state_arrays(optax.GradientTransformation(guarded.init,
                                                              guarded.update))) >= 4
