"""Sample quality of a trained model: exactly N samples, sharded over devices and hosts,
resumable, scored against a dataset split's reference statistics.

``--mode=fid_stats`` (``compute_reference_stats``): one pass over ``config.eval.fid_split``
of ``config.data``; every host extracts the Inception features of its own rows, float64
sums are merged exactly over hosts (``stats.merge_across_processes``) and written with
their metadata (weights sha256, resize, normalisation, quantisation, dataset, split,
resolution, n) and the raw pool3 features (KID, precision/recall, density/coverage need
them). An existing file with other metadata is refused, never silently reused.

``--mode=eval`` with ``config.eval.fid`` (``evaluate``): ``eval.fid_num_samples``
samples in chunks of the global ``sampling.batch_size`` (the sampler's output sharded
over the mesh; each host extracts its rows' features, which are gathered in global
order). The last chunk is generated whole and cut, so exactly N samples are scored.
Each finished chunk's features are written under ``<workdir>/fid/`` (by process 0; on
several hosts the workdir must be shared, e.g. GCS), keyed by the checkpoint step and a
hash of everything that changes the features (config, Inception weights' sha256), so a
preempted run continues where it stopped. ``eval.fid_num_seeds = 3`` repeats with three independent
seed ranges and reports the minimum FID (EDM's protocol). Keys carry the sample count:
``fid50k``, ``inception_score50k``, ``kid50k``, ``precision50k``, ... With
``eval.fid_source = "reconstructions"`` an autoencoder's reconstructions of the split's
first N images are scored instead (``recon_fid50k``, ...: rFID).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from lsgm_jax.evaluation import fid, inception, metrics, stats


class FIDConfigError(ValueError):
  """A config.eval FID field is invalid; the message names it."""


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """The ``config.eval`` FID fields, checked (see config_defaults for meanings)."""
  inception_weights: str
  num_samples: int
  stats_path: str
  split: str
  resize: str
  normalize: str
  quantize: str
  method: str
  batch_size: int
  num_seeds: int
  extra_metrics: bool
  input_size: int
  source: str


def quality_config(config: ml_collections.ConfigDict, workdir: str = "") -> QualityConfig:
  """The checked FID settings; raises FIDConfigError with one line naming the field."""
  ev = config.eval
  choices = {"fid_resize": inception.RESIZE_MODES, "fid_normalize": inception.NORMALIZE_MODES,
             "fid_quantize": inception.QUANTIZE_MODES, "fid_method": fid.METHODS,
             "fid_split": ("train", "eval"), "fid_source": ("samples", "reconstructions")}
  for field, allowed in choices.items():
    if ev[field] not in allowed:
      raise FIDConfigError(f"config.eval.{field}={ev[field]!r} is not one of {allowed}")
  for field in ("fid_num_samples", "fid_batch_size", "fid_num_seeds", "fid_train_num_samples"):
    if int(ev[field]) < 1:
      raise FIDConfigError(f"config.eval.{field}={ev[field]} must be >= 1")
  if int(ev.fid_num_samples) < 2:
    raise FIDConfigError("config.eval.fid_num_samples must be >= 2 (a covariance)")
  if not ev.inception_weights:
    raise FIDConfigError(
        "FID needs config.eval.inception_weights: the path of pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth (or an .npz / .safetensors with torchvision "
        "names); weights are never downloaded")
  if int(config.data.image_size) <= 0:
    raise FIDConfigError(f"FID needs image data; config.data.name={config.data.name!r} "
                         "is not an image dataset")
  return QualityConfig(
      inception_weights=str(ev.inception_weights), num_samples=int(ev.fid_num_samples),
      stats_path=str(ev.fid_stats) or default_stats_path(config, workdir),
      split=str(ev.fid_split), resize=str(ev.fid_resize), normalize=str(ev.fid_normalize),
      quantize=str(ev.fid_quantize), method=str(ev.fid_method),
      batch_size=int(ev.fid_batch_size), num_seeds=int(ev.fid_num_seeds),
      extra_metrics=bool(ev.fid_extra_metrics), input_size=int(ev.fid_inception_size),
      source=str(ev.fid_source))


def default_stats_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  return os.path.join(workdir, "fid_stats", f"{config.data.name}_{config.eval.fid_split}_"
                      f"{int(config.data.image_size)}.npz")


def count_label(n: int) -> str:
  """50000 -> "50k", 2000 -> "2k", 500 -> "500": the sample count in every metric key."""
  return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def make_extractor(qc: QualityConfig) -> inception.FeatureExtractor:
  return inception.feature_extractor(qc.inception_weights, resize=qc.resize,
                                     normalize=qc.normalize, batch_size=qc.batch_size,
                                     input_size=qc.input_size)


def reference_metadata(config: ml_collections.ConfigDict, qc: QualityConfig,
                       extractor: inception.FeatureExtractor) -> dict[str, Any]:
  # Real images are in the data pipeline's range; rounding recovers their uint8 values.
  return {**extractor.metadata(), "quantize": "round", "dataset": str(config.data.name),
          "split": qc.split, "resolution": int(config.data.image_size)}


# --- host <-> device plumbing ---------------------------------------------------------------

def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order."""
  if jax.process_count() == 1:
    return np.asarray(x)
  seen, parts = set(), []
  for shard in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0):
    start = shard.index[0].start or 0
    if start not in seen:  # replicas along other mesh axes hold the same rows
      seen.add(start)
      parts.append(np.asarray(shard.data))
  return np.concatenate(parts)


def gather_rows(x: np.ndarray) -> np.ndarray:
  """Every process's rows, concatenated in process order (exact for any dtype)."""
  if jax.process_count() == 1:
    return x
  gathered = stats.allgather_exact(np.ascontiguousarray(x))
  return gathered.reshape((-1,) + x.shape[1:])


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (only for remote paths)
  return tf.io.gfile


def _exists(path: str) -> bool:
  return _gfile().exists(path) if "://" in path else os.path.exists(path)


def _save_npz(path: str, **arrays) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  if "://" in path:
    _gfile().makedirs(os.path.dirname(path))
    with _gfile().GFile(path, "wb") as f:
      f.write(buffer.getvalue())
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    f.write(buffer.getvalue())
  os.replace(path + ".tmp", path)  # a preempted write never leaves a half chunk


def _load_npz(path: str) -> dict[str, np.ndarray]:
  opener = _gfile().GFile if "://" in path else open
  with opener(path, "rb") as f:
    with np.load(io.BytesIO(f.read())) as data:
      return {k: data[k] for k in data.files}


# --- reference statistics (--mode=fid_stats) ------------------------------------------------

def compute_reference_stats(config: ml_collections.ConfigDict, workdir: str,
                            extractor: inception.FeatureExtractor | None = None
                            ) -> dict[str, Any]:
  """Computes (or confirms the cache of) the reference statistics of ``eval.fid_split``."""
  from lsgm_jax import data  # pylint: disable=g-import-not-at-top
  qc = quality_config(config, workdir)
  extractor = extractor or make_extractor(qc)
  meta = reference_metadata(config, qc, extractor)
  if _exists(qc.stats_path):
    stats.check_metadata(qc.stats_path, meta)  # refuses a mismatch with one line
    logging.info("reference statistics %s are up to date", qc.stats_path)
    return {"path": qc.stats_path, **stats.load_metadata(qc.stats_path)}
  batch = qc.batch_size * jax.process_count()
  iterator = data.make_eval_iterator(
      config.data, global_batch_size=batch, process_index=jax.process_index(),
      process_count=jax.process_count(), split=qc.split)
  local = None
  features = []
  t0 = time.time()
  for i, rows in enumerate(iterator):
    real = np.asarray(rows["mask"]) > 0
    pixels = inception.to_pixels(np.asarray(rows["x"]), centered=bool(config.data.centered),
                                 quantize="round")
    pool3 = extractor(pixels, keys=("pool3",))["pool3"]
    local = local or stats.FeatureStats.zeros(pool3.shape[1])
    local.update(pool3[real])
    gathered = gather_rows(np.concatenate([pool3, real[:, None].astype(np.float32)], 1))
    features.append(gathered[gathered[:, -1] > 0, :-1])
    if i % 20 == 0:
      logging.info("reference features: %d batches, %.1f images/s", i + 1,
                   (i + 1) * batch / max(time.time() - t0, 1e-9))
  if local is None:
    raise ValueError(f"split {qc.split!r} of {config.data.name!r} yielded no images")
  total = stats.merge_across_processes(local)
  meta["n"] = total.n
  if jax.process_index() == 0:
    stats.save_stats(qc.stats_path, total, meta, features=np.concatenate(features))
  logging.info("wrote reference statistics of %d images to %s", total.n, qc.stats_path)
  return {"path": qc.stats_path, **meta}


def load_reference(qc: QualityConfig, extractor: inception.FeatureExtractor,
                   config: ml_collections.ConfigDict
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(mu, sigma, pool3 features or None) of the reference; our own files are checked
  against the request, files of other tools (no metadata) are taken as given."""
  if not _exists(qc.stats_path):
    raise FileNotFoundError(
        f"no reference statistics at {qc.stats_path}: run --mode=fid_stats first or set "
        "config.eval.fid_stats")
  meta = stats.load_metadata(qc.stats_path)
  if meta:
    expected = reference_metadata(config, qc, extractor)
    stats.check_metadata(qc.stats_path, expected)
  else:
    logging.warning("%s has no metadata (another tool's file): make sure it was computed "
                    "with resize=%s, normalize=%s", qc.stats_path, qc.resize, qc.normalize)
  mu, sigma = stats.load_stats(qc.stats_path)
  return mu, sigma, stats.load_features(qc.stats_path)


# --- generation -------------------------------------------------------------------------------

def generate_features(sample_fn: Callable[[jax.Array, int], jax.Array], *, num: int,
                      global_batch: int, rng: jax.Array, centered: bool, quantize: str,
                      extract: Callable[[np.ndarray], dict[str, np.ndarray]],
                      chunk_dir: str = "", keys: tuple[str, ...] = ("pool3", "logits")
                      ) -> dict[str, np.ndarray]:
  """Features of exactly ``num`` samples.

  Args:
    sample_fn: ``(rng, global_batch) -> samples``, a batch-sharded global array in the
      data range.
    num: samples to score (need not be a multiple of ``global_batch``).
    global_batch: samples per call, over all hosts.
    rng: chunk ``i`` samples with ``fold_in(rng, i)`` (so a resumed run draws the same).
    centered, quantize: how samples become pixels (``inception.to_pixels``).
    extract: ``uint8/float pixels [B, H, W, C] -> {key: [B, ...]}`` on this host's rows.
    chunk_dir: where finished chunks are kept ("" = nowhere: not resumable).
    keys: the features to keep.
  Returns:
    ``{key: [num, ...]}`` in global sample order, the same on every host.
  """
  num_chunks = -(-num // global_batch)
  out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  t0, done_here = time.time(), 0
  for i in range(num_chunks):
    keep = min(global_batch, num - i * global_batch)
    path = os.path.join(chunk_dir, f"chunk_{i:06d}.npz") if chunk_dir else ""
    if path and _exists(path):
      chunk = _load_npz(path)
    else:
      samples = local_rows(sample_fn(jax.random.fold_in(rng, i), global_batch))
      pixels = inception.to_pixels(samples, centered=centered, quantize=quantize)
      feats = extract(pixels)
      chunk = {k: gather_rows(np.asarray(feats[k], np.float32))[:keep] for k in keys}
      if path and jax.process_index() == 0:
        _save_npz(path, **chunk)
      done_here += keep
    for k in keys:
      out[k].append(chunk[k])
    if done_here and (i % 10 == 0 or i == num_chunks - 1):
      rate = done_here / max(time.time() - t0, 1e-9)
      left = num - min(num, (i + 1) * global_batch)
      logging.info("samples %d/%d (%.1f%%), %.2f samples/s, ETA %s", num - left, num,
                   100.0 * (num - left) / num, rate, _hms(left / rate))
  return {k: np.concatenate(v) for k, v in out.items()}


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def score_features(feats: dict[str, np.ndarray], mu: np.ndarray, sigma: np.ndarray,
                   ref_features: np.ndarray | None, qc: QualityConfig) -> dict[str, float]:
  """Every metric, each key labelled with the sample count."""
  n = len(feats["pool3"])
  label = count_label(n)
  out = {f"fid{label}": fid.fid_from_features(feats["pool3"], mu, sigma, qc.method)}
  logits = feats.get("logits")
  if logits is not None and np.all(np.isfinite(logits)):
    splits = 10 if n >= 10 else 1
    out[f"inception_score{label}"], out[f"inception_score{label}_std"] = (
        metrics.inception_score(logits, splits))
  if qc.extra_metrics and ref_features is not None and n > 5 and len(ref_features) > 5:
    out[f"kid{label}"] = metrics.kernel_inception_distance(ref_features, feats["pool3"])[0]
    pr = metrics.precision_recall(ref_features, feats["pool3"], k=3)
    dc = metrics.density_coverage(ref_features, feats["pool3"], k=5)
    out.update({f"{k}{label}": v for k, v in {**pr, **dc}.items()})
  return out


def _samples_key(config: ml_collections.ConfigDict, qc: QualityConfig, global_batch: int,
                 extractor_meta: dict) -> str:
  """A hash of everything that changes the scored features (not eval's other fields)."""
  relevant = {k: v for k, v in config.to_dict().items()
              if k not in ("eval", "checkpoint", "training")}
  relevant.update(quantize=qc.quantize, batch=global_batch, inception=extractor_meta)
  return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()
                        ).hexdigest()[:12]


def _cached_on(exp, name: str, build: Callable[[], Any]) -> Any:
  """One jitted program per experiment, so in-training FID compiles once."""
  cache = exp.__dict__.setdefault("_sample_quality_programs", {})
  if name not in cache:
    cache[name] = build()
  return cache[name]


def reconstruction_features(exp, state, qc: QualityConfig,
                            extract: Callable[[np.ndarray], dict[str, np.ndarray]],
                            num: int) -> dict[str, np.ndarray]:
  """Features of the reconstructions of the first ``num`` images of ``qc.split`` (every
  host reconstructs its own rows of each global batch; gathered in global order)."""
  from lsgm_jax import data, parallel  # pylint: disable=g-import-not-at-top
  config = exp.config
  global_batch = int(config.eval.batch_size)
  exp.check_batch_size(global_batch, "eval.batch_size")
  sharding = parallel.batch_sharding(exp.mesh)
  recon_fn = _cached_on(exp, "reconstruct",
                       lambda: jax.jit(exp.method.reconstruct, out_shardings=sharding))
  iterator = data.make_eval_iterator(
      config.data, global_batch_size=global_batch, process_index=jax.process_index(),
      process_count=jax.process_count(), split=qc.split)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 4_000_037)
  parts: dict[str, list[np.ndarray]] = {"pool3": [], "logits": []}
  count = 0
  for i, local in enumerate(iterator):
    batch = parallel.global_batch({"x": local["x"]}, exp.mesh)
    recon = local_rows(recon_fn(state, batch["x"], jax.random.fold_in(rng, i)))
    feats = extract(inception.to_pixels(recon, centered=bool(config.data.centered),
                                        quantize=qc.quantize))
    real = (np.asarray(local["mask"]) > 0)[:, None].astype(np.float32)
    for k in parts:
      gathered = gather_rows(np.concatenate([feats[k], real], axis=1))
      parts[k].append(gathered[gathered[:, -1] > 0, :-1])
    count += len(parts["pool3"][-1])
    if count >= num:
      break
  return {k: np.concatenate(v)[:num] for k, v in parts.items()}


def evaluate(exp, state, workdir: str, step: int, num_samples: int | None = None,
             resumable: bool = True) -> dict[str, float]:
  """Sample-quality metrics of ``state``'s EMA model (``exp``: ``train.Experiment``)."""
  from lsgm_jax import parallel  # pylint: disable=g-import-not-at-top
  config = exp.config
  qc = quality_config(config, workdir)
  num = qc.num_samples if num_samples is None else int(num_samples)
  extractor = make_extractor(qc)
  mu, sigma, ref_features = load_reference(qc, extractor, config)
  if qc.source == "reconstructions":
    feats = reconstruction_features(exp, state, qc, extractor, num)
    scores = score_features(feats, mu, sigma, ref_features, qc)
    return {f"recon_{k}": v for k, v in scores.items()}
  global_batch = int(config.sampling.batch_size)
  exp.check_batch_size(global_batch, "sampling.batch_size")
  sharded = _cached_on(exp, "sample", lambda: jax.jit(
      exp.method.sample, static_argnums=2,
      out_shardings=(parallel.batch_sharding(exp.mesh), parallel.replicated(exp.mesh))))
  label = count_label(num)
  key = _samples_key(config, qc, global_batch, extractor.metadata())
  results: dict[str, float] = {}
  for seed_index in range(qc.num_seeds):
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3_000_017 + seed_index)
    chunk_dir = (os.path.join(workdir, "fid", f"step_{step}", f"{label}_seed{seed_index}_{key}")
                 if resumable else "")
    feats = generate_features(
        lambda r, b: sharded(state, r, b)[0], num=num, global_batch=global_batch,
        rng=rng, centered=bool(config.data.centered), quantize=qc.quantize,
        extract=extractor, chunk_dir=chunk_dir)
    scores = score_features(feats, mu, sigma, ref_features, qc)
    logging.info("seed range %d: %s", seed_index, scores)
    if qc.num_seeds > 1:
      results[f"fid{label}_seed{seed_index}"] = scores[f"fid{label}"]
    if not results or scores[f"fid{label}"] <= results.get(f"fid{label}", np.inf):
      results.update(scores)  # EDM: the metrics of the seed range with the lowest FID
  return results
