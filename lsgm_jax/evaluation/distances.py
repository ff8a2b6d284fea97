"""Sample-based distances between point sets (2-D toy evaluation)."""

from __future__ import annotations

import numpy as np


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidths=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0)) -> float:
  """Unbiased squared MMD with a sum of RBF kernels (Gretton et al. 2012, eq. 3).

  Args:
    x: [N, D] samples.
    y: [M, D] samples.
    bandwidths: RBF length scales summed into one characteristic kernel.
  Returns:
    The unbiased MMD^2 estimate (can be slightly negative when the sets agree).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def gram(a, b):
    d2 = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2 * a @ b.T
    d2 = np.maximum(d2, 0.0)
    return sum(np.exp(-d2 / (2 * h**2)) for h in bandwidths)

  n, m = len(x), len(y)
  kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
               + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, num_projections: int = 256,
                       seed: int = 0) -> float:
  """Sliced 1-Wasserstein distance: mean over random directions of the 1-D W1.

  Both sets are resampled to the same size by quantiles so N != M works.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  rng = np.random.default_rng(seed)
  dirs = rng.normal(size=(num_projections, x.shape[1]))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  qs = np.linspace(0.0, 1.0, min(len(x), len(y)))
  px = np.quantile(x @ dirs.T, qs, axis=0)
  py = np.quantile(y @ dirs.T, qs, axis=0)
  return float(np.mean(np.abs(px - py)))
