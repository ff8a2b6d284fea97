"""Tests for lsgm_jax.data: determinism, exact resume, per-process slicing, ranges, eval
coverage, toy statistics, TFDS pipelines on mock data, and the missing-dataset error."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys

import numpy as np
import pytest

from lsgm_jax import config_defaults, data
from lsgm_jax.data import embedded

EMBEDDED = [
    dict(name="swiss_roll"),
    dict(name="diamond"),
    dict(name="digits", dequantize=True, random_flip=True),
    dict(name="digits", binarize=True, centered=False, pad_to=12),
]


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- config and info -------------------------------------------------------------------


def test_dataset_info():
  toy = data.dataset_info(dict(name="diamond", num_toy_eval=123))
  assert (toy.shape, toy.dims, toy.is_2d, toy.num_classes, toy.num_eval) == ((2,), 2, True, 0, 123)
  digits = data.dataset_info(dict(name="digits", pad_to=16))
  assert (digits.shape, digits.num_classes, digits.num_train, digits.num_eval) == (
      (16, 16, 1), 10, 1500, 297)
  cifar = data.dataset_info(dict(name="cifar10"))
  assert (cifar.shape, cifar.dims, cifar.num_classes, cifar.data_range) == (
      (32, 32, 3), 3072, 10, (-1.0, 1.0))
  mnist = data.dataset_info(dict(name="mnist", pad_to=32, centered=False, binarize=True))
  assert (mnist.shape, mnist.data_range) == ((32, 32, 1), (0.0, 1.0))
  assert data.dataset_info(dict(name="imagenet256")).shape == (256, 256, 3)
  assert data.dataset_info(dict(name="omniglot")).shape == (28, 28, 1)


def test_default_config_section_is_accepted():
  assert data.dataset_info(config_defaults.get_default_config().data).is_2d


@pytest.mark.parametrize("fields, named", [
    (dict(name="cifar100"), "name"),
    (dict(name="cifar10", binarize=True, dequantize=True), "binarize"),
    (dict(name="cifar10", num_channels=1), "num_channels"),
    (dict(name="digits", image_size=32), "image_size"),
    (dict(name="mnist", pad_to=16), "pad_to"),
    (dict(name="diamond", dequantize=True), "dequantize"),
    (dict(name="diamond", random_flips=True), "random_flips"),
])
def test_bad_config_names_the_field(fields, named):
  with pytest.raises(ValueError, match=f"config.data.{named}"):
    data.dataset_info(fields)


def test_bad_batch_layout():
  with pytest.raises(ValueError, match="multiple of the process count"):
    data.make_train_iterator(dict(name="diamond"), global_batch_size=10, seed=0, process_count=3)
  with pytest.raises(ValueError, match="exceeds"):
    data.make_train_iterator(dict(name="digits"), global_batch_size=2000, seed=0)


def test_embedded_data_never_imports_tensorflow():
  code = ("import sys; from lsgm_jax import data; data.dataset_info({'name': 'cifar10'}); "
          "next(data.make_train_iterator({'name': 'digits'}, global_batch_size=4, seed=0)); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


# --- embedded: determinism, resume, slicing, ranges ------------------------------------


@pytest.mark.parametrize("cfg", EMBEDDED, ids=lambda c: "-".join(map(str, c.values())))
def test_embedded_determinism_and_resume(cfg):
  fresh = _take(data.make_train_iterator(cfg, global_batch_size=600, seed=3), 7)
  again = _take(data.make_train_iterator(cfg, global_batch_size=600, seed=3), 7)
  _assert_batches_equal(fresh, again)
  other = next(data.make_train_iterator(cfg, global_batch_size=600, seed=4))
  assert not np.array_equal(other["x"], fresh[0]["x"])
  assert not np.array_equal(fresh[0]["x"], fresh[1]["x"])
  # Digits: 1500 // 600 = 2 steps per epoch, so k = 3 and 5 resume inside later epochs.
  for k in (1, 3, 5):
    resumed = _take(data.make_train_iterator(cfg, global_batch_size=600, seed=3,
                                             start_position=k), 7 - k)
    _assert_batches_equal(resumed, fresh[k:])


@pytest.mark.parametrize("cfg", EMBEDDED, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("num_processes", [2, 4])
def test_embedded_process_slices_concatenate_to_global_batch(cfg, num_processes):
  whole = _take(data.make_train_iterator(cfg, global_batch_size=400, seed=1, start_position=2), 3)
  parts = [_take(data.make_train_iterator(cfg, global_batch_size=400, seed=1, start_position=2,
                                          process_index=p, process_count=num_processes), 3)
           for p in range(num_processes)]
  for step, batch in enumerate(whole):
    for k in batch:
      assert parts[0][step][k].shape[0] == 400 // num_processes
      np.testing.assert_array_equal(np.concatenate([p[step][k] for p in parts]), batch[k])


def test_digits_values_and_labels():
  def batch(**fields):
    return next(data.make_train_iterator(dict(name="digits", **fields), global_batch_size=500,
                                         seed=0))
  plain = batch()
  assert plain["x"].shape == (500, 8, 8, 1) and plain["x"].dtype == np.float32
  assert plain["label"].dtype == np.int32 and set(plain["label"]) == set(range(10))
  levels = (plain["x"] + 1) / 2 * 16  # centered: 17 levels mapped onto [-1, 1]
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)
  assert plain["x"].min() == -1.0 and plain["x"].max() == 1.0
  deq = batch(dequantize=True, centered=False)["x"]
  assert 0.0 <= deq.min() and deq.max() <= 1.0
  # Same seed -> same rows; each value stays in its level's bin [k, k + 1) / 17.
  k = np.round((plain["x"] + 1) / 2 * 16)
  assert np.all((deq * 17 >= k - 1e-5) & (deq * 17 <= k + 1 + 1e-5))
  assert len(np.unique(deq)) > 1000
  binary = batch(binarize=True, centered=False)["x"]
  assert set(np.unique(binary)) == {0.0, 1.0}
  np.testing.assert_allclose(binary.mean(), (k / 16).mean(), atol=0.02)
  padded = batch(pad_to=12, centered=False)["x"]
  assert padded.shape == (500, 12, 12, 1)
  assert not padded[:, :2].any() and not padded[:, -2:].any() and not padded[:, :, :2].any()


def test_digits_split_is_fixed_and_disjoint():
  train_x, train_y, eval_x, eval_y = embedded.digits_split()
  assert (len(train_y), len(eval_y)) == (1500, 297)
  # Fixed: the split and its order are pinned (sklearn's bundled digits, constant seed).
  digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes()
                                   for a in (train_x, train_y, eval_x, eval_y)))
  assert digest.hexdigest()[:16] == "3baa7db9dad366cd"
  np.testing.assert_array_equal(eval_y[:10], [1, 9, 1, 2, 2, 9, 2, 4, 0, 6])
  assert train_x.max() == 16 and train_x.min() == 0
  rows = {r.tobytes() for r in train_x} & {r.tobytes() for r in eval_x}
  assert len(rows) <= 2  # sklearn's digits hold a few exact duplicates, nothing more
  seen = set()
  for batch in _take(data.make_train_iterator(dict(name="digits", centered=False),
                                              global_batch_size=500, seed=9), 3):
    seen |= {r.tobytes() for r in np.rint(batch["x"] * 16).astype(np.int64)}
  assert seen <= {r.tobytes() for r in train_x}  # one epoch touches only training images


# --- eval iterators ----------------------------------------------------------------------


@pytest.mark.parametrize("cfg, num", [(dict(name="digits", dequantize=True), 297),
                                      (dict(name="swiss_roll", num_toy_eval=1000), 1000),
                                      (dict(name="diamond", num_toy_eval=10), 10)])
@pytest.mark.parametrize("num_processes", [1, 2])
def test_eval_covers_every_example_once(cfg, num, num_processes):
  global_batch = 64
  passes = [list(data.make_eval_iterator(cfg, global_batch_size=global_batch, process_index=p,
                                         process_count=num_processes))
            for p in range(num_processes)]
  assert len({len(p) for p in passes}) == 1 and len(passes[0]) == -(-num // global_batch)
  x, label = embedded._eval_arrays(data.as_data_config(cfg))  # pylint: disable=protected-access
  real_rows, total_mask = [], 0.0
  for step in range(len(passes[0])):
    for p in range(num_processes):
      batch = passes[p][step]
      assert batch["x"].shape[0] == global_batch // num_processes
      assert batch["mask"].dtype == np.float32 and set(np.unique(batch["mask"])) <= {0.0, 1.0}
      real = batch["mask"] == 1.0
      assert np.all(np.diff(batch["mask"]) <= 0)  # real rows first, then padding
      assert not batch["x"][~real].any()
      real_rows.append(batch["x"][real])
      total_mask += batch["mask"].sum()
  assert total_mask == num
  np.testing.assert_array_equal(np.concatenate(real_rows), x)
  # Independent of the layout: the same noise whatever the batch size.
  again = np.concatenate([b["x"][b["mask"] == 1] for b in data.make_eval_iterator(
      cfg, global_batch_size=100)])
  np.testing.assert_array_equal(again, x)
  assert len(label) == num


# --- toy statistics ----------------------------------------------------------------------


def test_diamond_modes_layout():
  means = embedded.diamond_means()
  # A 3x3 grid on [-0.5, 0.5]^2 turned 45 degrees: the centre, four points on the axes at
  # distance sqrt(0.5), four on the diagonals at distance 0.5.
  radii = np.sort(np.linalg.norm(means, axis=1))
  np.testing.assert_allclose(radii, [0.0] + [0.5] * 4 + [np.sqrt(0.5)] * 4, atol=1e-12)
  on_axes = means[np.isclose(np.linalg.norm(means, axis=1), np.sqrt(0.5))]
  assert np.all(np.isclose(np.abs(on_axes).min(axis=1), 0.0, atol=1e-12))
  x = np.concatenate([b["x"] for b in _take(
      data.make_train_iterator(dict(name="diamond"), global_batch_size=6000, seed=0), 3)])
  mode = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
  counts = np.bincount(mode, minlength=9) / len(x)
  np.testing.assert_allclose(counts, 1 / 9, atol=0.015)
  for m in range(9):
    np.testing.assert_allclose(x[mode == m].mean(0), means[m], atol=0.005)
    np.testing.assert_allclose(x[mode == m].std(0), embedded.DIAMOND_STD, rtol=0.1)


def test_swiss_roll_modes():
  x = np.concatenate([b["x"] for b in _take(
      data.make_train_iterator(dict(name="swiss_roll"), global_batch_size=5000, seed=0), 2)])
  offsets = embedded.SWISS_ROLL_OFFSETS
  dist = np.linalg.norm(x[:, None] - offsets[None], axis=-1)
  mode = dist.argmin(1)
  np.testing.assert_allclose(np.bincount(mode, minlength=5) / len(x), 0.2, atol=0.02)
  # Each roll: radius t * 0.01 with t in [1.5 pi, 4.5 pi], plus 0.002-std noise (6 sigma).
  r = dist.min(1)
  assert r.min() > 0.015 * np.pi - 0.012 and r.max() < 0.045 * np.pi + 0.012
  assert np.quantile(r, 0.01) > 0.015 * np.pi - 0.004
  assert np.abs(x).max() < 1.0


# --- TFDS (mock data) -------------------------------------------------------------------


@pytest.fixture
def tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  from lsgm_jax.data import tfds_pipeline  # pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  assert not tf.config.get_visible_devices("GPU")
  with tfds.testing.mock_data(num_examples=20):
    yield


def test_tfds_cifar10_pipeline(tfds_mock):
  del tfds_mock
  cfg = dict(name="cifar10", random_flip=True, dequantize=True, shuffle_buffer=8)

  def run(seed, start=0, n=3, **over):
    return _take(data.make_train_iterator({**cfg, **over}, global_batch_size=4, seed=seed,
                                          start_position=start), n)

  batches = run(0, n=7)  # 20 examples / 4 = 5 steps per epoch: crosses into epoch 1
  for b in batches:
    assert b["x"].shape == (4, 32, 32, 3) and b["x"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["label"].min() >= 0 and b["label"].max() < 10
    assert -1.0 <= b["x"].min() and b["x"].max() <= 1.0
  _assert_batches_equal(batches, run(0, n=7))
  _assert_batches_equal(run(0, start=3, n=4), batches[3:])
  assert not np.array_equal(run(1, n=1)[0]["x"], batches[0]["x"])
  # Same seed without the random steps: same examples; dequantized values stay within
  # their 8-bit bin, and each image is either the plain one or its mirror, some flipped.
  plain = run(0, n=5, random_flip=False, dequantize=False)
  deq_only = run(0, n=5, random_flip=False)
  flipped = 0
  for p, d, f in zip(plain, deq_only, run(0, n=5, dequantize=False)):
    np.testing.assert_array_equal(p["label"], d["label"])
    level = (p["x"] + 1) / 2 * 255
    np.testing.assert_allclose(level, np.round(level), atol=1e-3)
    offset = (d["x"] + 1) / 2 * 256 - level
    assert offset.min() > -1e-3 and offset.max() < 1 + 1e-3 and offset.std() > 0.2
    for i in range(4):
      same = np.array_equal(f["x"][i], p["x"][i])
      mirror = np.array_equal(f["x"][i], p["x"][i][:, ::-1])
      assert same or mirror
      flipped += mirror and not same
  assert 0 < flipped < 20


def test_tfds_mnist_pipeline_and_eval(tfds_mock):
  del tfds_mock
  cfg = dict(name="mnist", binarize=True, centered=False, pad_to=32)
  b = next(data.make_train_iterator(cfg, global_batch_size=6, seed=0))
  assert b["x"].shape == (6, 32, 32, 1) and set(np.unique(b["x"])) == {0.0, 1.0}
  assert not b["x"][:, :2].any() and not b["x"][:, 30:].any()
  assert b["label"].max() < 10
  evals = list(data.make_eval_iterator(cfg, global_batch_size=6))
  assert [e["mask"].sum() for e in evals] == [6, 6, 6, 2]
  assert all(e["x"].shape == (6, 32, 32, 1) for e in evals)
  assert not evals[-1]["x"][2:].any() and not evals[-1]["label"][2:].any()
  again = list(data.make_eval_iterator(cfg, global_batch_size=6))
  _assert_batches_equal(evals, again)


def test_tfds_missing_dataset_message(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError) as err:
    data.make_train_iterator(dict(name="lsun_church", data_dir=str(tmp_path)),
                             global_batch_size=4, seed=0)
  message = str(err.value)
  assert "'lsun/church_outdoor'" in message and "`tfds build lsun/church_outdoor" in message
  assert str(tmp_path) in message and "\n" not in message
  with pytest.raises(FileNotFoundError, match="manual download"):
    data.make_eval_iterator(dict(name="imagenet256", data_dir=str(tmp_path)), global_batch_size=4)


def _tiny_builder_class():
  """A registered, locally generated TFDS dataset: image i is filled with the value i."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class LsgmDataTestImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(0, 40),
              "test": self._generate_examples(100, 13)}

    def _generate_examples(self, first, num):  # pylint: disable=arguments-differ
      for i in range(first, first + num):
        yield i, {"image": np.full((28, 28, 1), i, np.uint8), "label": i % 10}

  return LsgmDataTestImages


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  from lsgm_jax.data import catalog  # pylint: disable=import-outside-toplevel
  builder_class = _tiny_builder_class()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder_class(data_dir=data_dir).download_and_prepare()
  spec = catalog.TfdsSpec(tfds.core.naming.camelcase_to_snakecase(builder_class.__name__),
                          "train", "test", 40, 13, channels=1, native_size=28,
                          default_size=28, label_key="label", num_classes=10)
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(catalog.TFDS_DATASETS, "mnist", spec)
    yield dict(name="mnist", data_dir=data_dir, centered=False, shuffle_buffer=16)


def test_tfds_prepared_shards_resume_and_eval(prepared_tfds):
  cfg = prepared_tfds

  def ids(batches):  # the stored index of every example, recovered from its pixels
    return [np.rint(b["x"][:, 0, 0, 0] * 255).astype(int).tolist() for b in batches]

  # 2 processes, local batch 4: each reads 20 examples -> 5 steps per epoch.
  per_process = [_take(data.make_train_iterator(cfg, global_batch_size=8, seed=5,
                                                process_index=p, process_count=2), 10)
                 for p in range(2)]
  for epoch in range(2):
    seen = [i for p in per_process for b in ids(p[5 * epoch:5 * epoch + 5]) for i in b]
    assert sorted(seen) == list(range(40))  # every example once per epoch, shards disjoint
  assert ids(per_process[0][:5]) != ids(per_process[0][5:])  # reshuffled each epoch
  for b in per_process[0]:
    np.testing.assert_array_equal(b["label"], np.array(ids([b])[0]) % 10)
  resumed = _take(data.make_train_iterator(cfg, global_batch_size=8, seed=5, start_position=6,
                                           process_index=0, process_count=2), 4)
  _assert_batches_equal(resumed, per_process[0][6:])
  # Eval over 2 processes (shards of 7 and 6), local batch 3: 3 batches each, all 13 once.
  evals = [list(data.make_eval_iterator(cfg, global_batch_size=6, process_index=p,
                                        process_count=2)) for p in range(2)]
  assert [len(e) for e in evals] == [3, 3]
  real = [i for e in evals for b in e for i, m in zip(ids([b])[0], b["mask"]) if m == 1]
  assert sorted(real) == list(range(100, 113))
  assert sum(b["mask"].sum() for e in evals for b in e) == 13
