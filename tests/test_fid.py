"""FID, feature statistics and the other sample-quality metrics against closed forms and
brute-force NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from lsgm_jax.evaluation import fid, metrics, stats


def _rotation(d: int, seed: int) -> np.ndarray:
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q


@pytest.mark.parametrize("method", fid.METHODS)
def test_frechet_distance_closed_forms(method):
  # Commuting covariances (shared eigenvectors): FID = |dmu|^2 + sum (sqrt a - sqrt b)^2.
  q = _rotation(6, 0)
  a, b = np.array([0.5, 1, 2, 3, 4, 9.0]), np.array([1, 1, 0.25, 5, 2, 4.0])
  mu1, mu2 = np.arange(6.0), np.arange(6.0)[::-1] * 0.5
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T, method)
  assert abs(got - expected) < 1e-10
  # Diagonal 2-D case.
  got = fid.frechet_distance([0.0, 1.0], np.diag([4.0, 1.0]), [3.0, 1.0], np.diag([1.0, 9.0]),
                             method=method)
  assert abs(got - (9.0 + (2 - 1) ** 2 + (1 - 3) ** 2)) < 1e-10
  # Identical Gaussians.
  s = q @ np.diag(a) @ q.T
  assert abs(fid.frechet_distance(mu1, s, mu1, s, method)) < 1e-10
  assert isinstance(got, float)


def test_matrix_root_methods_agree_on_full_rank_covariances():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
  y = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32)) + 0.3
  args = (*stats.FeatureStats.from_features(x).mu_sigma(),
          *stats.FeatureStats.from_features(y).mu_sigma())
  values = [fid.frechet_distance(*args, method=m) for m in fid.METHODS]
  assert values[0] > 1.0
  np.testing.assert_allclose(values, values[0], rtol=1e-9)
  # Rank-deficient (fewer samples than dimensions): the symmetric form stays real and >= 0.
  few = stats.FeatureStats.from_features(rng.normal(size=(10, 32)))
  value = fid.frechet_distance(*few.mu_sigma(), *args[2:], method="eigh")
  assert np.isfinite(value) and value > 0
  with pytest.raises(ValueError, match="method"):
    fid.frechet_distance(*args, method="cholesky")


def test_fid_from_few_features_equals_the_full_eigendecomposition():
  rng = np.random.default_rng(7)
  ref = stats.FeatureStats.from_features(rng.normal(size=(300, 48)) @ rng.normal(size=(48, 48)))
  few = rng.normal(0.2, 1.5, size=(20, 48))  # rank-19 covariance: the N x N route
  full = fid.frechet_distance(*stats.FeatureStats.from_features(few).mu_sigma(),
                              *ref.mu_sigma(), method="eigh")
  # 1e-7: the D x D route takes square roots of round-off eigenvalues (~1e-14) of the
  # rank-deficient S1, each adding ~1e-7; the N x N route has none.
  assert fid.fid_from_features(few, *ref.mu_sigma()) == pytest.approx(full, rel=1e-7)
  many = rng.normal(size=(100, 48))  # full rank: the D x D route
  assert fid.fid_from_features(many, *ref.mu_sigma(), method="sqrtm") == pytest.approx(
      fid.fid_from_features(many, *ref.mu_sigma()), rel=1e-9)


def test_merged_shard_statistics_equal_np_cov_of_the_concatenation():
  rng = np.random.default_rng(2)
  shards = [rng.normal(0.5, 2.0, size=(n, 16)) for n in (7, 130, 1, 64)]
  merged = stats.FeatureStats.zeros(16)
  for shard in shards:
    merged = merged.merge(stats.FeatureStats.from_features(shard))
  everything = np.concatenate(shards)
  assert merged.n == len(everything)
  np.testing.assert_allclose(merged.mean(), everything.mean(0), rtol=0, atol=1e-10)
  np.testing.assert_allclose(merged.covariance(), np.cov(everything, rowvar=False),
                             rtol=0, atol=1e-10)
  # Averaging per-shard covariances (LSGM's multi-GPU FID) is not the same statistic.
  averaged = np.mean([np.cov(s, rowvar=False) for s in shards if len(s) > 1], axis=0)
  assert np.max(np.abs(averaged - merged.covariance())) > 1e-2
  # float64 bytes survive the uint32 exchange used between hosts.
  np.testing.assert_array_equal(stats.allgather_exact(merged.sum_outer)[0], merged.sum_outer)


def test_reference_formats_and_metadata_refusal(tmp_path):
  rng = np.random.default_rng(3)
  pool = rng.normal(size=(50, 8)).astype(np.float32)
  np.savez(tmp_path / "score_sde.npz", pool_3=pool, logits=rng.normal(size=(50, 10)))
  mu, sigma = fid.load_stats(str(tmp_path / "score_sde.npz"))
  np.testing.assert_allclose(mu, pool.astype(np.float64).mean(0), atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(pool.astype(np.float64), rowvar=False), atol=1e-12)
  np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)
  mu2, sigma2 = fid.load_stats(str(tmp_path / "pytorch_fid.npz"))
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)

  meta = {"inception_sha256": "ab" * 32, "resize": "torch", "normalize": "torch",
          "quantize": "round", "dataset": "cifar10", "split": "train", "resolution": 32,
          "n": 50}
  path = str(tmp_path / "ref.npz")
  stats.save_stats(path, stats.FeatureStats.from_features(pool), meta)
  mu3, sigma3 = fid.load_stats(path)
  np.testing.assert_allclose(sigma3, sigma, atol=1e-12)
  assert stats.load_metadata(path) == meta
  stats.check_metadata(path, meta)
  with pytest.raises(stats.StatsMismatchError) as info:
    stats.check_metadata(path, dict(meta, resize="tf1"))
  assert "\n" not in str(info.value) and "resize: cached 'torch' vs requested 'tf1'" in str(info.value)
  # EDM's .pkl references: arrays only; any other class is refused.
  import pickle
  with open(tmp_path / "edm.pkl", "wb") as f:
    pickle.dump({"mu": mu, "sigma": sigma}, f)
  mu4, sigma4 = fid.load_stats(str(tmp_path / "edm.pkl"))
  np.testing.assert_array_equal(sigma4, sigma)
  with open(tmp_path / "evil.pkl", "wb") as f:
    pickle.dump({"mu": mu, "sigma": sigma, "x": stats.FeatureStats.zeros(1)}, f)
  with pytest.raises(ValueError, match="refusing to unpickle"):
    fid.load_stats(str(tmp_path / "evil.pkl"))
  np.savez(tmp_path / "other.npz", features=pool)
  with pytest.raises(ValueError, match="neither"):
    fid.load_stats(str(tmp_path / "other.npz"))


def test_inception_score_limits():
  # Uniform predictions -> 1; C classes used evenly with certainty -> C.
  assert metrics.inception_score(np.zeros((100, 1008)), splits=10) == pytest.approx((1.0, 0.0))
  c = 10
  onehot = np.eye(c)[np.arange(200) % c] * 200.0
  mean, std = metrics.inception_score(onehot, splits=10)
  assert mean == pytest.approx(c, rel=1e-9) and std < 1e-9
  mean1, _ = metrics.inception_score(onehot, splits=1)
  assert mean1 == pytest.approx(c, rel=1e-9)
  with pytest.raises(ValueError, match="non-finite"):
    metrics.inception_score(np.full((4, 3), np.nan))


def test_kid_is_the_unbiased_polynomial_mmd():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(60, 5)), rng.normal(0.5, 1.0, size=(60, 5))
  k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
  m = 60
  brute = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1))
           + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).mean())
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=1000)
  assert mean == pytest.approx(brute, rel=1e-12) and std == 0.0
  same, _ = metrics.kernel_inception_distance(rng.normal(size=(500, 5)),
                                              rng.normal(size=(500, 5)), 20, 200)
  assert abs(same) < 0.05 < mean


def _brute_knn_metrics(real, fake, k_pr=3, k_dc=5):
  def d(a, b):
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
  drr, dff, dfr = d(real, real), d(fake, fake), d(fake, real)
  r_real = np.sort(drr, 1)[:, k_pr]
  r_fake = np.sort(dff, 1)[:, k_pr]
  precision = np.mean(np.any(dfr <= r_real[None], 1))
  recall = np.mean(np.any(dfr.T <= r_fake[None], 1))
  r5 = np.sort(drr, 1)[:, k_dc]
  density = np.sum(dfr < r5[None]) / (k_dc * len(fake))
  coverage = np.mean(dfr.min(0) < r5)
  return precision, recall, density, coverage


def test_precision_recall_density_coverage_equal_brute_force():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(203, 6))
  fake = rng.normal(0.3, 1.2, size=(151, 6))
  pr = metrics.precision_recall(real, fake, k=3, block=64)
  dc = metrics.density_coverage(real, fake, k=5, block=64)
  p, r, d, c = _brute_knn_metrics(real, fake)
  assert pr == {"precision": pytest.approx(p, abs=1e-12), "recall": pytest.approx(r, abs=1e-12)}
  assert dc == {"density": pytest.approx(d, abs=1e-12), "coverage": pytest.approx(c, abs=1e-12)}
  assert 0.3 < p < 1 and 0.3 < r < 1
  same = metrics.precision_recall(real, real, block=64)
  assert same == {"precision": 1.0, "recall": 1.0}
  assert metrics.density_coverage(real, real, block=64)["coverage"] == 1.0


def test_a_collapsed_generator_has_precision_but_no_recall():
  rng = np.random.default_rng(6)
  centres = rng.normal(0, 8.0, size=(10, 8))
  real = centres[np.arange(1000) % 10] + rng.normal(size=(1000, 8))
  fake = centres[0] + rng.normal(size=(500, 8))  # one mode of ten
  pr = metrics.precision_recall(real, fake, k=3, block=256)
  assert pr["precision"] > 0.8 and pr["recall"] < 0.3
  dc = metrics.density_coverage(real, fake, block=256)
  assert dc["coverage"] < 0.2
