"""Inception feature-extraction throughput, and the projected wall time of a 50k FID.

  python benchmarks/fid_features.py [--sizes=32,256] [--batch=100] [--repeats=3] \
      [--project=configs/cld_cifar.py] [--sample_batch=8] [--sample_steps=4] [--nfe=150]

Features: the FID InceptionV3 (``lsgm_jax.evaluation.inception``, random weights: speed
does not depend on their values) over all local devices, on uint8 NHWC batches of each
size resized to 299; timed through the public extractor (NumPy in, NumPy out: host
transfers included) after a compile call, best of ``--repeats``.

Projection (``--project``): the config's real jitted sampler (random weights) is timed
at ``--sample_steps`` steps on ``--sample_batch`` samples; the time per network
evaluation (``info["nfe"]``) times ``--nfe`` gives the time per batch, and
``--num_samples / batch`` batches plus the feature extraction give the FID's wall time.

Runs on any backend; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _device_name() -> str:
  import jax
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  cpu = platform.processor() or platform.machine()
  return f"{jax.device_count()} x {kind}" + (f" ({os.cpu_count()} cores, {cpu})"
                                             if device.platform == "cpu" else "")


def random_variables(seed: int = 0):
  """InceptionV3 variables with random values (NumPy; no compiled init)."""
  import jax
  import numpy as np
  from lsgm_jax.evaluation import inception_weights
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name or "scale" in name:
      return np.ones(s.shape, np.float32)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    std = np.sqrt(2.0 / fan_in) if len(s.shape) > 1 else 0.0
    return (rng.standard_normal(s.shape) * std).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, inception_weights.abstract_variables())


def feature_throughput(sizes, batch: int, repeats: int) -> dict:
  import numpy as np
  from lsgm_jax.evaluation import inception
  extractor = inception.FeatureExtractor(random_variables(), batch_size=batch)
  out = {}
  for size in sizes:
    images = np.random.default_rng(size).integers(
        0, 256, (extractor.batch_size, size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    extractor(images)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      extractor(images)
      best = min(best, time.perf_counter() - t0)
    out[f"{size}x{size}"] = {"images_per_s": round(len(images) / best, 2),
                             "batch": len(images), "first_call_s": round(first, 1)}
  return out


def project(config_path: str, sample_batch: int, sample_steps: int, nfe: int,
            num_samples: int, features_per_s: float) -> dict:
  import jax
  from benchmarks.train_step import load_config
  from lsgm_jax import train
  config = load_config(config_path, [])
  config.sampling.num_steps = sample_steps
  config.sampling.batch_size = sample_batch
  exp = train.Experiment(config, "/tmp/unused_benchmark_workdir")
  t0 = time.perf_counter()
  state = exp.init_fn(exp.rng)
  samples, info = exp.sample_fn(state, jax.random.PRNGKey(1), sample_batch)
  jax.block_until_ready(samples)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  samples, info = exp.sample_fn(state, jax.random.PRNGKey(2), sample_batch)
  jax.block_until_ready(samples)
  seconds = time.perf_counter() - t0
  measured_nfe = float(jax.device_get(info["nfe"]))
  per_nfe = seconds / measured_nfe
  batches = -(-num_samples // sample_batch)
  sampling_s = batches * nfe * per_nfe
  features_s = num_samples / features_per_s
  return {"config": config_path, "params": exp.num_params, "sampler": config.sampling.method,
          "sample_batch": sample_batch, "measured_steps": sample_steps,
          "measured_nfe": measured_nfe, "measured_batch_s": round(seconds, 2),
          "compile_and_first_s": round(first, 1), "s_per_nfe_per_batch": round(per_nfe, 4),
          "projected_nfe": nfe, "num_samples": num_samples,
          "projected_sampling_h": round(sampling_s / 3600, 2),
          "projected_features_h": round(features_s / 3600, 3),
          "projected_total_h": round((sampling_s + features_s) / 3600, 2)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="32,256")
  parser.add_argument("--batch", type=int, default=100, help="Inception batch (all devices)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--project", default="", help="configs/<file>.py[:variant] to project")
  parser.add_argument("--sample_batch", type=int, default=8)
  parser.add_argument("--sample_steps", type=int, default=4)
  parser.add_argument("--nfe", type=int, default=150)
  parser.add_argument("--num_samples", type=int, default=50_000)
  args = parser.parse_args(argv)

  from lsgm_jax.main import hide_accelerators_from_tensorflow
  hide_accelerators_from_tensorflow()
  sizes = [int(s) for s in args.sizes.split(",") if s]
  result = {"device": _device_name(),
            "features": feature_throughput(sizes, args.batch, args.repeats)}
  if args.project:
    rate = result["features"][f"{sizes[-1]}x{sizes[-1]}"]["images_per_s"]
    result["projection"] = project(args.project, args.sample_batch, args.sample_steps,
                                   args.nfe, args.num_samples, rate)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
