"""Test session setup: CPU only, 8 fake devices (sharding tests), quiet TensorFlow.

These variables must be set before jax is imported anywhere in the session.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from tests.helpers import CHEAP_XLA_FLAGS  # noqa: E402  (helpers import no jax)

os.environ["JAX_PLATFORMS"] = "cpu"
# XLA's cheap CPU compile settings (tests/helpers.py): the suite is compile-bound; measured
# on 2 cores, the two-stage LSGM test 282 -> 168 CPU s. Users and benchmarks keep XLA's
# default optimisation.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {CHEAP_XLA_FLAGS}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Persistent compilation cache: a test that trains, then resumes or evaluates, compiles
# the same step twice; the second is read from disk (per pytest worker).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lsgm_jax_xla_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")


# The longest tests (minutes of compilation each on 2 cores) run first, so that pytest-xdist
# does not leave one of them for the end of a `-n 2` run while the other worker idles.
SLOW_FIRST = (
    "test_lsgm_method.py::test_two_stages_end_to_end",
    "test_cld_method.py::test_cld_digits_trains_samples_and_reports_bits_per_dim",
    "test_guidance.py::test_digits_classifier_trains_and_guides_the_score_model",
    "test_score_vae.py::test_three_stages_end_to_end",
    "test_nvae.py::test_tiny_forward_train_eval_and_sample",
    "test_main.py::test_missing_dataset_names_the_builder",
    "test_ldm.py::",
    "test_nvae.py::test_tiny_rgb_dml_flows_res_dist_gradients",
    "test_latent_vae.py::test_tiny_model_trains_evaluates_and_samples_manifold",
    "test_main.py::test_train_sample_eval_from_the_command_line",
)


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item):
    for i, key in enumerate(SLOW_FIRST):
      if key in item.nodeid:
        return i
    return len(SLOW_FIRST)

  items.sort(key=rank)  # stable: the rest keep their order
