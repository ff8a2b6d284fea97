"""Spectral regularisation of a network given as a parameter tree (NVAE / LSGM "SR").

The penalty is sum_l sigma_max(W_l) over convolution kernels, each reshaped to
[out, in * kh * kw] as in the reference's ``SpectralNormCalculator``; sigma_max is the
power-iteration estimate u^T W v with the singular-vector estimates u, v carried between
steps (no gradient through them). Used for LSGM's score model, whose NCSN++ layers have no
spectral bookkeeping of their own (the NVAE sows its own estimates).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _kernels(params: PyTree) -> dict[str, jax.Array]:
  """Every convolution ``kernel`` leaf as an [out, fan_in] matrix, keyed by path.

  4-D leaves are convolutions; 5-D leaves are a scanned run's convolutions stacked on a
  leading axis (NCSN++ ``scan_blocks``) and become [n, out, fan_in]: one matrix, and one
  sigma_max, per block, exactly as in the unrolled network.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if getattr(path[-1], "key", None) == "kernel" and leaf.ndim in (4, 5):
      w = jnp.reshape(leaf, leaf.shape[:-4] + (-1, leaf.shape[-1]))
      out[jax.tree_util.keystr(path)] = jnp.swapaxes(w, -1, -2)
  return out


def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-3)


def _power_iterate(w: jax.Array, u: jax.Array, num_iter: int) -> tuple[jax.Array, jax.Array]:
  if w.ndim == 3:  # stacked kernels: each its own power iteration
    return jax.vmap(lambda wi, ui: _power_iterate(wi, ui, num_iter))(w, u)
  w = jax.lax.stop_gradient(w)

  def body(_, uv):
    u, _ = uv
    v = _normalize(u @ w)
    return _normalize(w @ v), v

  return jax.lax.fori_loop(0, num_iter, body, (u, jnp.zeros((w.shape[1],), w.dtype)))


def _sigma(w: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """sum of u^T W v over the (possibly stacked) matrices."""
  return jnp.sum(u * jnp.matmul(w, v[..., None])[..., 0])


def init_power_vectors(params: PyTree, rng: jax.Array, num_iter: int = 40
                       ) -> dict[str, dict[str, jax.Array]]:
  """Random unit u, v per kernel after ``num_iter`` iterations (the reference's first call
  runs 10 x num_power_iter)."""
  state = {}
  for i, (name, w) in enumerate(sorted(_kernels(params).items())):
    u0 = _normalize(jax.random.normal(jax.random.fold_in(rng, i), w.shape[:-1], jnp.float32))
    u, v = _power_iterate(w.astype(jnp.float32), u0, num_iter)
    state[name] = {"u": u, "v": v}
  return state


def spectral_penalty(params: PyTree, vectors: dict[str, dict[str, jax.Array]],
                     num_iter: int = 4) -> tuple[jax.Array, dict[str, dict[str, jax.Array]]]:
  """(sum of sigma_max estimates, updated vectors); gradients reach the kernels only."""
  total = jnp.zeros((), jnp.float32)
  new = {}
  for name, w in sorted(_kernels(params).items()):
    w = w.astype(jnp.float32)
    u, v = _power_iterate(w, vectors[name]["u"], num_iter)
    total = total + _sigma(w, u, v)
    new[name] = {"u": u, "v": v}
  return total, new
