"""The train state pytree and the family-independent update step.

A method supplies a loss; this module turns it into one update: gradient accumulation
over microbatches (``lax.scan``), global-norm clipping, the skip guard (non-finite or
too-large steps leave params, EMA and optimizer state untouched and are counted), the
optimizer update and the EMA. Nothing here syncs with the host.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from lsgm_jax import optim
from lsgm_jax.models import conv

PyTree = Any
# loss_fn(params, model_state, batch, rng, step) -> (loss, (metrics, new_model_state))
LossFn = Callable[..., tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]]


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: one pytree, checkpointed whole."""

  step: jax.Array  # int32 scalar: update steps attempted (skipped ones included)
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  model_state: PyTree  # non-trained collections (e.g. BatchNorm statistics); {} if none
  rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)
  num_skipped: jax.Array  # int32: total steps skipped by the guard
  consecutive_skips: jax.Array  # int32: skipped steps in a row, reset by a good step


def create_train_state(
    params: PyTree, model_state: PyTree,
    tx: optax.GradientTransformation | optim.GuardedAdam, rng: jax.Array
) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      model_state=model_state,
      rng=rng,
      num_skipped=jnp.zeros((), jnp.int32),
      consecutive_skips=jnp.zeros((), jnp.int32),
  )


def cast_floating(tree: PyTree, dtype: jnp.dtype) -> PyTree:
  """Casts the floating leaves of ``tree`` (compute-dtype copies of f32 params)."""
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def split_microbatches(batch: PyTree, num_microbatches: int) -> PyTree:
  """[B, ...] -> [M, B/M, ...] with microbatch m = rows m, m+M, m+2M, ...

  Strided rows keep every microbatch spread over all devices of the batch-sharded
  leading axis (a contiguous split would put each microbatch on a few devices only).
  """
  def split(x):
    b = x.shape[0]
    if b % num_microbatches:
      raise ValueError(
          f"batch of {b} does not split into {num_microbatches} microbatches")
    x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_update_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation | optim.GuardedAdam,
    *,
    num_microbatches: int = 1,
    grad_clip: float = 0.0,
    skip_threshold: float = 0.0,
    ema_decay: float = 0.999,
    compute_dtype: jnp.dtype = jnp.float32,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    materialize: bool | None = None,
) -> Callable[[TrainState, PyTree], tuple[TrainState, dict[str, jax.Array]]]:
  """Returns ``step(state, batch) -> (state, metrics)``, pure and jit-able.

  Metrics are scalars: the method's loss terms (means over the batch), ``grad_norm``
  (before clipping), ``skipped`` (1.0 if the guard dropped this step), the running
  counters and the learning rate.

  ``materialize`` (default: the default backend is CPU) orders an ``optim.GuardedAdam``
  update into one in-place kernel per new leaf, which XLA:CPU cannot fuse on its own.
  """
  if materialize is None:
    materialize = jax.default_backend() == "cpu"

  def grads_of(params, model_state, batch, rng, step):
    def wrapped(p):
      p = cast_floating(p, compute_dtype) if compute_dtype != jnp.float32 else p
      return loss_fn(p, model_state, batch, rng, step)
    # Convolutions inside scanned blocks get a gradient XLA:CPU runs fast (models/conv.py).
    with conv.canonical_cpu_gradients():
      (loss, (metrics, new_model_state)), grads = jax.value_and_grad(
          wrapped, has_aux=True)(params)
    metrics = dict(metrics, loss=loss)
    return grads, metrics, new_model_state

  def accumulated_grads(params, model_state, batch, rng, step):
    if num_microbatches == 1:
      return grads_of(params, model_state, batch, rng, step)
    micro = split_microbatches(batch, num_microbatches)

    def body(carry, inputs):
      grad_sum, ms = carry
      index, mb = inputs
      g, m, ms = grads_of(params, ms, mb, jax.random.fold_in(rng, index), step)
      return (jax.tree.map(jnp.add, grad_sum, g), ms), m

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, model_state), metrics = jax.lax.scan(
        body, (zeros, model_state), (jnp.arange(num_microbatches), micro))
    grads = jax.tree.map(lambda g: g / num_microbatches, grad_sum)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    return grads, metrics, model_state

  def step_fn(state: TrainState, batch: PyTree):
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics, new_model_state = accumulated_grads(
        state.params, state.model_state, batch, rng, state.step)
    grad_norm = optax.tree.norm(grads)
    if grad_clip > 0:
      scale = jnp.minimum(1.0, grad_clip / (grad_norm + 1e-12))
      grads = jax.tree.map(lambda g: g * scale, grads)

    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    if skip_threshold > 0:
      ok &= grad_norm < skip_threshold

    def keep_if_ok(new, old):
      return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

    if isinstance(tx, optim.GuardedAdam):  # the same numbers, updated in place
      new_params, new_opt_state = tx.apply_if(
          grads, state.opt_state, state.params, ok, materialize=materialize)
    else:
      updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
      new_params = keep_if_ok(optax.apply_updates(state.params, updates), state.params)
      new_opt_state = keep_if_ok(new_opt_state, state.opt_state)
    # The EMA reads the kept params (equal to the new ones whenever it is not discarded).
    new_ema = keep_if_ok(jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                      state.ema_params, new_params), state.ema_params)

    skipped = (~ok).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        ema_params=new_ema,
        opt_state=new_opt_state,
        model_state=keep_if_ok(new_model_state, state.model_state),
        num_skipped=state.num_skipped + skipped,
        consecutive_skips=jnp.where(ok, 0, state.consecutive_skips + 1),
    )
    metrics = dict(
        metrics,
        grad_norm=grad_norm,
        skipped=skipped.astype(jnp.float32),
        num_skipped=new_state.num_skipped,
        consecutive_skips=new_state.consecutive_skips,
    )
    if learning_rate_fn is not None:
      metrics["lr"] = learning_rate_fn(state.step)
    return new_state, metrics

  return step_fn
