"""Frechet Inception Distance (Heusel et al. 2017, eq. 6):

    FID = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

in float64, with three ways to the trace of the matrix root, all equal in exact
arithmetic for positive semi-definite S1, S2:

- ``eigh`` (default): the symmetric form tr((S1^{1/2} S2 S1^{1/2})^{1/2}), two symmetric
  eigendecompositions, negative round-off eigenvalues clipped to 0. Stable on
  rank-deficient covariances (fewer samples than 2048 dimensions) and never complex.
- ``sqrtm``: pytorch-fid's ``scipy.linalg.sqrtm(S1 S2)`` (a Schur method on the
  non-symmetric product), with its fallback of adding 1e-6 I to both covariances when the
  root is not finite and its real part taken (LSGM and EDM use the same form).
- ``svd``: tfgan's ``trace_sqrt_product`` (score_sde, CLD-SGM): S1^{1/2} by SVD, then
  the root of S1^{1/2} S2 S1^{1/2} by SVD, singular values below 1e-10 kept unrooted as
  tfgan does.

``load_stats`` reads both reference formats (``stats.load_stats``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from lsgm_jax.evaluation.stats import FeatureStats, load_stats  # noqa: F401 (public API)

METHODS = ("eigh", "sqrtm", "svd")


def _sqrt_psd_eigh(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
  root1 = _sqrt_psd_eigh(s1)
  m = root1 @ s2 @ root1
  w = np.linalg.eigvalsh((m + m.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def _trace_sqrt_sqrtm(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
  root = scipy.linalg.sqrtm(s1 @ s2)
  if not np.isfinite(root).all():  # singular product: regularise both (pytorch-fid)
    offset = np.eye(s1.shape[0]) * eps
    root = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(root):
    if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm: imaginary component {np.max(np.abs(root.imag)):.3g}")
    root = root.real
  return float(np.trace(root))


def _sqrt_svd(a: np.ndarray, eps: float = 1e-10) -> np.ndarray:
  u, s, vt = np.linalg.svd(a)
  s = np.where(s < eps, s, np.sqrt(s))  # tfgan's _symmetric_matrix_square_root
  return (u * s) @ vt


def _trace_sqrt_svd(s1: np.ndarray, s2: np.ndarray) -> float:
  root1 = _sqrt_svd(s1)
  return float(np.trace(_sqrt_svd(root1 @ s2 @ root1)))


_TRACE_SQRT = {"eigh": _trace_sqrt_eigh, "sqrtm": _trace_sqrt_sqrtm, "svd": _trace_sqrt_svd}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, method: str = "eigh") -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1, mu2: [D] means.
    sigma1, sigma2: [D, D] covariances.
    method: ``eigh`` | ``sqrtm`` | ``svd`` (module docstring).
  Returns:
    The distance (a Python float).
  """
  if method not in _TRACE_SQRT:
    raise ValueError(f"method={method!r} is not one of {METHODS}")
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / "
                     f"{s2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2)
               - 2.0 * _TRACE_SQRT[method](s1, s2))


def fid_from_stats(a: FeatureStats, b: FeatureStats, method: str = "eigh") -> float:
  return frechet_distance(*a.mu_sigma(), *b.mu_sigma(), method=method)


def fid_from_features(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                      method: str = "eigh") -> float:
  """FID of [N, D] features against reference statistics.

  With ``eigh`` and fewer samples than dimensions (in-training ``fid2k`` on 2048-d
  pool3), the sample covariance is S1 = A A^T with A = (X - mean)^T / sqrt(N - 1), and
  S1^{1/2} S2 S1^{1/2} has the nonzero eigenvalues of A^T S2 A: an N x N problem instead
  of two D x D eigendecompositions, the same value.
  """
  x = np.asarray(features, np.float64)
  n, d = x.shape
  if method != "eigh" or n - 1 >= d:
    return frechet_distance(*FeatureStats.from_features(x).mu_sigma(), ref_mu, ref_sigma,
                            method=method)
  mu = x.mean(axis=0)
  a = (x - mu).T / np.sqrt(n - 1)
  s2 = np.asarray(ref_sigma, np.float64)
  m = a.T @ s2 @ a
  w = np.linalg.eigvalsh((m + m.T) / 2.0)
  diff = mu - np.asarray(ref_mu, np.float64)
  return float(diff @ diff + np.sum(a * a) + np.trace(s2)
               - 2.0 * np.sum(np.sqrt(np.clip(w, 0.0, None))))
