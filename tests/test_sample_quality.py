"""The sample-quality pipeline: exactly N samples, 8 devices = 1 device, resumable chunks,
--mode=fid_stats with metadata refusal, labelled metric keys."""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lsgm_jax import main as lsgm_main
from lsgm_jax.evaluation import fid, inception, sample_quality, stats
from lsgm_jax.evaluation import inception_weights as iw
from tests import inception_recipe as recipe
from tests.helpers import load_config


def _images(rng, num):
  """A stand-in sampler: 8x8 grey images in [-1, 1]."""
  return jnp.tanh(jax.random.normal(rng, (num, 8, 8, 1)))


def _sharded_sampler(devices, calls=None):
  mesh = Mesh(np.asarray(devices), ("data",))
  fn = jax.jit(_images, static_argnums=1, out_shardings=NamedSharding(mesh, P("data")))

  def sample(rng, num):
    if calls is not None:
      calls.append(num)
    return fn(rng, num)

  return sample


def _cheap_extract(pixels):
  x = np.asarray(pixels, np.float32).reshape(len(pixels), -1)
  return {"pool3": x[:, :12] / 255.0, "logits": x[:, :10] / 25.0}


def test_exactly_n_samples_and_8_devices_equal_1():
  rng = jax.random.PRNGKey(3)
  kwargs = dict(num=13, global_batch=8, rng=rng, centered=True, quantize="round",
                extract=_cheap_extract)
  calls = []
  one = sample_quality.generate_features(_sharded_sampler(jax.devices()[:1], calls), **kwargs)
  eight = sample_quality.generate_features(_sharded_sampler(jax.devices()[:8]), **kwargs)
  assert one["pool3"].shape == (13, 12) and one["logits"].shape == (13, 10)
  assert calls == [8, 8]  # two full chunks drawn, the second cut to 5
  expected = np.concatenate([_images(jax.random.fold_in(rng, i), 8) for i in range(2)])[:13]
  pixels = inception.to_pixels(np.asarray(expected), centered=True, quantize="round")
  np.testing.assert_array_equal(one["pool3"], _cheap_extract(pixels)["pool3"])
  a = stats.FeatureStats.from_features(one["pool3"])
  b = stats.FeatureStats.from_features(eight["pool3"])
  assert a.n == b.n == 13
  np.testing.assert_allclose(a.covariance(), b.covariance(), rtol=0, atol=1e-10)
  np.testing.assert_allclose(a.mean(), b.mean(), rtol=0, atol=1e-10)


def test_a_preempted_run_resumes_from_its_chunks(tmp_path):
  rng = jax.random.PRNGKey(4)
  kwargs = dict(num=20, global_batch=8, rng=rng, centered=True, quantize="floor",
                extract=_cheap_extract, chunk_dir=str(tmp_path / "chunks"))
  sampler = _sharded_sampler(jax.devices()[:8])
  calls = []

  def preempted(r, n):
    if len(calls) == 2:
      raise KeyboardInterrupt("preempted")
    calls.append(n)
    return sampler(r, n)

  with pytest.raises(KeyboardInterrupt):
    sample_quality.generate_features(preempted, **kwargs)
  assert sorted(os.listdir(tmp_path / "chunks")) == ["chunk_000000.npz", "chunk_000001.npz"]
  resumed_calls = []
  resumed = sample_quality.generate_features(
      lambda r, n: resumed_calls.append(n) or sampler(r, n), **kwargs)
  assert resumed_calls == [8]  # only the third chunk is drawn again
  whole = sample_quality.generate_features(sampler, **dict(kwargs, chunk_dir=""))
  np.testing.assert_array_equal(resumed["pool3"], whole["pool3"])
  assert len(resumed["pool3"]) == 20


def test_count_labels_and_config_errors(tmp_path):
  assert [sample_quality.count_label(n) for n in (50_000, 2000, 500, 2500)] == [
      "50k", "2k", "500", "2500"]
  config = load_config("sgm_digits", "smoke")
  with pytest.raises(sample_quality.FIDConfigError, match="config.eval.inception_weights"):
    sample_quality.quality_config(config)
  config.eval.inception_weights = "w.pth"
  config.eval.fid_resize = "antialias"
  with pytest.raises(sample_quality.FIDConfigError, match=r"config.eval.fid_resize='antialias'"):
    sample_quality.quality_config(config)
  # From the command line: one line, before anything is built.
  config = load_config("sgm_digits", "smoke")
  config.eval.fid = True
  from lsgm_jax.config_checks import ConfigError
  with pytest.raises(ConfigError, match="config.eval.inception_weights"):
    lsgm_main.run(config, str(tmp_path), lsgm_main.Mode.EVAL)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), iw.abstract_variables())
  shapes = {k: v.shape for k, v in iw.variables_to_state_dict(zeros).items()}
  path = str(tmp_path_factory.mktemp("weights") / "inception.npz")
  np.savez(path, **recipe.state_dict(shapes))
  return path


def test_fid_stats_mode_and_labelled_metrics(small_weights, tmp_path):
  """--mode=fid_stats on the digits' held-out split, then every metric on 20 stand-in
  samples with the real network (75 px input: a smoke size, 299 in real use)."""
  config = load_config("sgm_digits", "smoke")
  ev = config.eval
  ev.inception_weights, ev.fid_split, ev.fid_inception_size = small_weights, "eval", 75
  ev.fid_batch_size, ev.fid_num_samples = 64, 20
  workdir = str(tmp_path)
  info = lsgm_main.run(config, workdir, lsgm_main.Mode.FID_STATS)
  path = sample_quality.default_stats_path(config, workdir)
  assert info["path"] == path and info["n"] == 297 and info["split"] == "eval"
  meta = stats.load_metadata(path)
  assert meta["inception_sha256"] == iw.file_sha256(small_weights)
  assert (meta["resize"], meta["normalize"], meta["quantize"], meta["resolution"]) == (
      "torch", "torch", "round", 8)
  assert stats.load_features(path).shape == (297, 2048)
  # Cached: a second call reuses it; other settings are refused with one line.
  assert lsgm_main.run(config, workdir, lsgm_main.Mode.FID_STATS)["n"] == 297
  config.eval.fid_normalize = "tf"
  with pytest.raises(stats.StatsMismatchError, match="normalize: cached 'torch' vs"):
    lsgm_main.run(config, workdir, lsgm_main.Mode.FID_STATS)
  config.eval.fid_normalize = "torch"

  # evaluate() with a stand-in experiment whose "model" draws _images.
  mesh = Mesh(np.asarray(jax.devices()).reshape(8, 1), ("data", "fsdp"))
  method = types.SimpleNamespace(sample=lambda state, rng, num: (_images(rng, num), {}))
  exp = types.SimpleNamespace(config=config, method=method, mesh=mesh,
                              check_batch_size=lambda *a: None)
  config.sampling.batch_size = 8
  results = sample_quality.evaluate(exp, None, workdir, step=7)
  assert set(results) == {"fid20", "inception_score20", "inception_score20_std", "kid20",
                          "precision20", "recall20", "density20", "coverage20"}
  # The FID is that of the same samples' features against the stored statistics.
  extract = sample_quality.make_extractor(sample_quality.quality_config(config, workdir))
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3_000_017)
  samples = np.concatenate([_images(jax.random.fold_in(rng, i), 8) for i in range(3)])[:20]
  feats = extract(inception.to_pixels(samples, centered=True, quantize="round"))
  expected = fid.fid_from_features(feats["pool3"], *fid.load_stats(path))
  assert results["fid20"] == pytest.approx(expected, rel=1e-6)
  assert results["fid20"] > 0 and 1.0 <= results["inception_score20"]
  chunks = os.listdir(os.path.join(workdir, "fid", "step_7"))
  assert len(chunks) == 1 and chunks[0].startswith("20_seed0_")
  json.dumps(results)  # plain floats

  # EDM's protocol: the minimum over 3 seed ranges (range 0 resumes from its chunks).
  config.eval.fid_num_seeds, config.eval.fid_extra_metrics = 3, False
  seeds = sample_quality.evaluate(exp, None, workdir, step=7)
  per_seed = [seeds[f"fid20_seed{i}"] for i in range(3)]
  assert per_seed[0] == results["fid20"] and len(set(per_seed)) == 3
  assert seeds["fid20"] == min(per_seed)
  config.eval.fid_num_seeds, config.eval.fid_extra_metrics = 1, True

  # Reconstruction FID: perfect reconstructions of the reference split score 0.
  config.eval.fid_source, config.eval.fid_num_samples = "reconstructions", 297
  method.reconstruct = lambda state, x, rng: x
  recon = sample_quality.evaluate(exp, None, workdir, step=7)
  assert abs(recon["recon_fid297"]) < 1e-6
  assert recon["recon_precision297"] == recon["recon_recall297"] == 1.0


_TWO_PROCESS_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
from lsgm_jax.evaluation import sample_quality, stats
x = np.random.default_rng(0).normal(size=(10, 6)) * 3 + 1
local = stats.FeatureStats.from_features(x[:4] if pid == 0 else x[4:])  # unequal shares
total = stats.merge_across_processes(local)
mesh = Mesh(np.asarray(jax.devices()), ("data",))
fn = jax.jit(lambda r, n: jnp.tanh(jax.random.normal(r, (n, 8, 8, 1))), static_argnums=1,
             out_shardings=NamedSharding(mesh, P("data")))
extract = lambda p: {"pool3": np.asarray(p, np.float32).reshape(len(p), -1)[:, :12] / 255.0}
feats = sample_quality.generate_features(fn, num=7, global_batch=4, rng=jax.random.PRNGKey(3),
                                         centered=True, quantize="round", extract=extract,
                                         keys=("pool3",))
np.savez(out, n=total.n, sum=total.sum, outer=total.sum_outer, pool3=feats["pool3"])
"""


def test_two_hosts_merge_statistics_exactly_and_gather_samples_in_order(tmp_path):
  import socket
  import subprocess
  import sys
  from tests.helpers import REPO, subprocess_env
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  outs = [str(tmp_path / f"p{i}.npz") for i in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(port), str(i),
                             outs[i]], cwd=REPO, env=subprocess_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  x = np.random.default_rng(0).normal(size=(10, 6)) * 3 + 1
  single = stats.FeatureStats.from_features(x)
  expected = sample_quality.generate_features(
      _sharded_sampler(jax.devices()[:1]), num=7, global_batch=4, rng=jax.random.PRNGKey(3),
      centered=True, quantize="round", extract=_cheap_extract, keys=("pool3",))
  for out in outs:  # every host ends with the same job-wide numbers
    got = np.load(out)
    assert int(got["n"]) == 10
    np.testing.assert_allclose(got["sum"], single.sum, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["outer"], single.sum_outer, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got["pool3"], expected["pool3"])
