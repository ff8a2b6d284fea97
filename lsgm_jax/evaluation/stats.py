"""Feature statistics for FID: float64 sums merged exactly over devices and hosts, and the
reference-statistics files of the anchors.

A statistic is ``(n, sum x, sum x x^T)`` in float64 (``FeatureStats``). Sums merge
exactly: shards (devices, hosts, resumed chunks) add, and the covariance is formed once
from the total, ``(S - n mu mu^T) / (n - 1)`` (= ``np.cov`` of the concatenation). This is
not an average of per-host covariances (LSGM's multi-GPU FID averages per-GPU ``mu`` and
``sigma``, which drops the between-host scatter). Float32 sums over 50k samples move the
covariance by ~0.3%, hence float64, on the host; hosts exchange the float64 bytes as
uint32 words so the merge stays exact when jax runs without x64.

File formats read by ``load_stats``: ``{mu, sigma}`` (pytorch-fid, LSGM, and what
``save_stats`` writes, with metadata) and ``{pool_3}`` raw activations (score_sde and
CLD-SGM's ``cifar10_stats.npz``, converted with float64 ``np.cov``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle

import jax
import numpy as np


@dataclasses.dataclass
class FeatureStats:
  """Running float64 sums of D-dimensional features."""
  n: int
  sum: np.ndarray  # [D] float64
  sum_outer: np.ndarray  # [D, D] float64

  @classmethod
  def zeros(cls, dim: int) -> "FeatureStats":
    return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

  @classmethod
  def from_features(cls, features: np.ndarray) -> "FeatureStats":
    stats = cls.zeros(np.shape(features)[-1])
    stats.update(features)
    return stats

  @property
  def dim(self) -> int:
    return int(self.sum.shape[0])

  def update(self, features: np.ndarray) -> "FeatureStats":
    """Adds a [B, D] batch of features (in place; returns self)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"features of shape {x.shape} do not match dimension {self.dim}")
    self.n += int(x.shape[0])
    self.sum += x.sum(axis=0)
    self.sum_outer += x.T @ x
    return self

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """The statistics of both sets together (exact: sums add)."""
    if other.dim != self.dim:
      raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
    return FeatureStats(self.n + other.n, self.sum + other.sum,
                        self.sum_outer + other.sum_outer)

  def mean(self) -> np.ndarray:
    if self.n < 1:
      raise ValueError("no features accumulated")
    return self.sum / self.n

  def covariance(self) -> np.ndarray:
    """Unbiased (n - 1) covariance, as ``np.cov(x, rowvar=False)``."""
    if self.n < 2:
      raise ValueError(f"a covariance needs at least 2 features, have {self.n}")
    mu = self.mean()
    return (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)

  def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
    return self.mean(), self.covariance()

  def to_arrays(self) -> dict[str, np.ndarray]:
    return {"n": np.int64(self.n), "sum": self.sum, "sum_outer": self.sum_outer}

  @classmethod
  def from_arrays(cls, arrays) -> "FeatureStats":
    return cls(int(arrays["n"]), np.asarray(arrays["sum"], np.float64),
               np.asarray(arrays["sum_outer"], np.float64))


def _as_words(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x).view(np.uint32)


def allgather_exact(x: np.ndarray) -> np.ndarray:
  """[P, ...] stack of every process's ``x`` (float64 / int64 bytes exchanged as uint32,
  so no value is rounded even when jax has x64 off). One process: ``x[None]``."""
  x = np.ascontiguousarray(x)
  if jax.process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils
  words = np.asarray(multihost_utils.process_allgather(_as_words(x.reshape(-1))))
  return words.view(x.dtype).reshape((jax.process_count(),) + x.shape)


def merge_across_processes(stats: FeatureStats) -> FeatureStats:
  """The job-wide statistics from every host's local sums; the same on every host
  (summed in process order)."""
  if jax.process_count() == 1:
    return stats
  ns = allgather_exact(np.array([stats.n], np.int64))
  sums = allgather_exact(stats.sum)
  outers = allgather_exact(stats.sum_outer)
  total = FeatureStats(int(ns[0, 0]), sums[0].copy(), outers[0].copy())
  for p in range(1, ns.shape[0]):
    total = total.merge(FeatureStats(int(ns[p, 0]), sums[p], outers[p]))
  return total


# --- files --------------------------------------------------------------------------------

class StatsMismatchError(ValueError):
  """A cached reference statistic was computed differently from what is requested."""


def save_stats(path: str, stats: FeatureStats, metadata: dict | None = None,
               features: np.ndarray | None = None) -> None:
  """Writes ``{mu, sigma}`` (pytorch-fid's keys, readable by its tools) plus ``n``, the
  float64 sums, a JSON ``metadata`` string and, if given, the raw features as
  ``pool_3`` (score_sde's key: KID and precision/recall need them)."""
  mu, sigma = stats.mu_sigma()
  extra = {} if features is None else {"pool_3": np.asarray(features, np.float32)}
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top (remote paths only)
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma, **stats.to_arrays(), **extra,
             metadata=np.array(json.dumps(metadata or {}, sort_keys=True)))
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(buffer.getvalue())
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, mu=mu, sigma=sigma, **stats.to_arrays(), **extra,
           metadata=np.array(json.dumps(metadata or {}, sort_keys=True)))
  os.replace(tmp, path)


def _exists(path: str) -> bool:
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top (remote paths only)
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def _open(path: str):
  """A binary file object for local or remote (``gs://``) paths; np.load reads it."""
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top (remote paths only)
    with tf.io.gfile.GFile(path, "rb") as f:
      return io.BytesIO(f.read())
  return open(path, "rb")


class _ArrayUnpickler(pickle.Unpickler):
  """Plain containers and NumPy arrays only (EDM's ``.pkl`` references); any other
  class in the file is refused, so no code from it runs."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise ValueError(f"refusing to unpickle {module}.{name} from a statistics file")


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """``(mu, sigma)`` in float64 from a ``{mu, sigma}`` or a ``{pool_3}`` ``.npz``, or an
  EDM-style ``.pkl`` holding ``{"mu", "sigma"}``.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: a file with neither layout.
  """
  if not _exists(path):
    raise FileNotFoundError(f"reference statistics not found: {path}")
  if path.endswith(".pkl"):
    with _open(path) as f:
      obj = _ArrayUnpickler(f).load()
    if not (isinstance(obj, dict) and {"mu", "sigma"} <= set(obj)):
      raise ValueError(f"{path}: not a {{mu, sigma}} pickle")
    return np.asarray(obj["mu"], np.float64), np.asarray(obj["sigma"], np.float64)
  with _open(path) as raw, np.load(raw, allow_pickle=False) as f:
    keys = set(f.files)
    if {"mu", "sigma"} <= keys:
      return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    if "pool_3" in keys:  # score_sde / CLD-SGM: raw activations
      pool = np.asarray(f["pool_3"], np.float64).reshape(len(f["pool_3"]), -1)
      return FeatureStats.from_features(pool).mu_sigma()
  raise ValueError(f"{path}: neither {{mu, sigma}} nor {{pool_3}} statistics "
                   f"(keys {sorted(keys)})")


def load_features(path: str) -> np.ndarray | None:
  """The raw ``pool_3`` features of a statistics file, or None if it holds only
  ``{mu, sigma}``."""
  if path.endswith(".pkl"):
    return None
  with _open(path) as raw, np.load(raw, allow_pickle=False) as f:
    if "pool_3" not in f.files:
      return None
    return np.asarray(f["pool_3"], np.float32).reshape(len(f["pool_3"]), -1)


def load_metadata(path: str) -> dict:
  """The metadata ``save_stats`` stored (empty for files from other tools)."""
  if path.endswith(".pkl"):
    return {}
  with _open(path) as raw, np.load(raw, allow_pickle=False) as f:
    return json.loads(str(f["metadata"])) if "metadata" in f.files else {}


def check_metadata(path: str, expected: dict) -> None:
  """Refuses (one line) a cache whose metadata differs from ``expected`` on any key."""
  found = load_metadata(path)
  diffs = [f"{k}: cached {found.get(k)!r} vs requested {v!r}"
           for k, v in sorted(expected.items()) if found.get(k) != v]
  if diffs:
    raise StatsMismatchError(
        f"{path} was computed with different settings ({'; '.join(diffs)}); delete it or "
        "point config.eval.fid_stats elsewhere to recompute")
