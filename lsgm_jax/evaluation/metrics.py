"""Sample-quality metrics besides FID: Inception Score, KID, precision / recall and
density / coverage.

- Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), on ``splits``
  equal parts (10 as in the original code and tfgan, or 1), mean and std over splits.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets (100 of at most 1000, as in
  their code and EDM's).
- Precision / recall (Kynkaanniemi et al. 2019): each set's k-NN balls (k = 3, radius =
  distance to the k-th nearest other point); a sample is "in the manifold" of the other
  set if it falls in some ball, ``distance <= radius`` (their Eq. 1).
- Density / coverage (Naeem et al. 2020, Eq. 3-4): k-NN balls of the real set only;
  density counts how many real balls contain each fake sample / k, coverage is the
  fraction of real balls holding at least one fake sample, both with ``<``.

Pairwise distances are computed blockwise on device (squared distances from a HIGHEST
precision matmul, ``lax.top_k`` for the k-NN radii), so 50k x 50k never materialises.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HIGHEST = lax.Precision.HIGHEST


# --- Inception Score and KID (host, float64) ------------------------------------------------

def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over ``splits`` of exp(mean_x KL(p(y|x) || p(y))) from [N, C] logits."""
  logits = np.asarray(logits, np.float64)
  if not np.all(np.isfinite(logits)):
    raise ValueError("non-finite logits (Inception weights without the fc layer?)")
  logp = logits - logits.max(axis=1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(logp, splits):
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0))
    kl = np.sum(p * (part - log_marginal[None]), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _mmd2_polynomial(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 between equal-size sets with k(a, b) = (a.b / d + 1)^3."""
  d, m = x.shape[1], x.shape[0]
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(within - 2.0 * kxy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0
                              ) -> tuple[float, float]:
  """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets.

  Each subset draws ``min(subset_size, len(real), len(fake))`` points of each set without
  replacement. With one subset of the whole sets it is the plain unbiased MMD^2.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  m = min(subset_size, len(real), len(fake))
  if m < 2:
    raise ValueError("KID needs at least 2 samples per set")
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = fake[rng.choice(len(fake), m, replace=False)] if m < len(fake) else fake
    y = real[rng.choice(len(real), m, replace=False)] if m < len(real) else real
    values.append(_mmd2_polynomial(x, y))
  return float(np.mean(values)), float(np.std(values))


# --- k-NN manifold metrics (device, blockwise) ------------------------------------------------

def _pad_rows(x: np.ndarray, block: int) -> tuple[jax.Array, int]:
  n = len(x)
  padded = -(-n // block) * block
  out = np.zeros((padded, x.shape[1]), np.float32)
  out[:n] = x
  return jnp.asarray(out), n


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  d2 = (jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :]
        - 2.0 * jnp.matmul(a, b.T, precision=HIGHEST))
  return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _knn_sq_radii(x: jax.Array, n: jax.Array, *, k: int, block: int) -> jax.Array:
  """Squared distance of each row of x[:n] to its k-th nearest other row of x[:n]."""
  valid = jnp.arange(x.shape[0]) < n

  def one_block(rows):
    d2 = jnp.where(valid[None], _sq_dists(rows, x), jnp.inf)
    # The k + 1 smallest include the point itself (distance 0).
    return -lax.top_k(-d2, k + 1)[0][:, k]

  return lax.map(one_block, x.reshape(-1, block, x.shape[1])).reshape(-1)


@functools.partial(jax.jit, static_argnames=("block", "strict"))
def _ball_counts(queries: jax.Array, ref: jax.Array, sq_radii: jax.Array, n_ref: jax.Array,
                 *, block: int, strict: bool) -> tuple[jax.Array, jax.Array]:
  """Per query: how many reference balls contain it, and its squared distance to the
  nearest reference point (padding excluded)."""
  valid = jnp.arange(ref.shape[0]) < n_ref

  def one_block(rows):
    d2 = _sq_dists(rows, ref)
    inside = (d2 < sq_radii[None]) if strict else (d2 <= sq_radii[None])
    count = jnp.sum(jnp.where(valid[None], inside, False), axis=1)
    nearest = jnp.min(jnp.where(valid[None], d2, jnp.inf), axis=1)
    return count, nearest

  counts, nearest = lax.map(one_block, queries.reshape(-1, block, queries.shape[1]))
  return counts.reshape(-1), nearest.reshape(-1)


def knn_sq_radii(x: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
  """Squared k-NN radii of the rows of ``x`` ([N, D]) among themselves."""
  block = min(block, len(x))
  padded, n = _pad_rows(np.asarray(x, np.float32), block)
  return np.asarray(_knn_sq_radii(padded, n, k=k, block=block))[:n]


def _counts(queries: np.ndarray, ref: np.ndarray, sq_radii: np.ndarray, strict: bool,
            block: int) -> tuple[np.ndarray, np.ndarray]:
  qblock = min(block, len(queries))
  q, nq = _pad_rows(np.asarray(queries, np.float32), qblock)
  r, nr = _pad_rows(np.asarray(ref, np.float32), 1)
  counts, nearest = _ball_counts(q, r, jnp.asarray(sq_radii, jnp.float32), nr,
                                 block=qblock, strict=strict)
  return np.asarray(counts)[:nq], np.asarray(nearest)[:nq]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 1024
                     ) -> dict[str, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) of [N, D] / [M, D]
  features (VGG16 fc2 in the paper; Inception pool3 works the same way)."""
  real_r = knn_sq_radii(real, k, block)
  fake_r = knn_sq_radii(fake, k, block)
  in_real, _ = _counts(fake, real, real_r, strict=False, block=block)
  in_fake, _ = _counts(real, fake, fake_r, strict=False, block=block)
  return {"precision": float(np.mean(in_real > 0)), "recall": float(np.mean(in_fake > 0))}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, block: int = 1024
                     ) -> dict[str, float]:
  """Density and coverage (Naeem et al. 2020; k = 5 as in their experiments)."""
  real_r = knn_sq_radii(real, k, block)
  counts, _ = _counts(fake, real, real_r, strict=True, block=block)
  # Coverage: real ball i holds some fake sample iff its nearest fake is closer than r_i.
  _, nearest_fake = _counts(real, fake, np.zeros(len(fake), np.float32), strict=True,
                            block=block)
  return {"density": float(np.sum(counts) / (k * len(fake))),
          "coverage": float(np.mean(nearest_fake < real_r))}
