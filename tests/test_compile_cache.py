"""The persistent compilation cache for user runs (lsgm_jax/compile_cache.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax

from lsgm_jax.compile_cache import enable_compilation_cache
from lsgm_jax.config_defaults import get_default_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import json, os, sys
import jax, jax.numpy as jnp
from lsgm_jax.compile_cache import enable_compilation_cache
from lsgm_jax.config_defaults import get_default_config
config = get_default_config()
config.training.compilation_cache_dir = sys.argv[1]
config.training.compilation_cache_min_compile_s = 0.0
used = enable_compilation_cache(config)
jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()
print(json.dumps({"used": used, "files": sorted(os.listdir(used))}))
"""


def _run(cache_dir: str) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SCRIPT, cache_dir], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_config_directory_receives_compiled_programs(tmp_path):
  cache = tmp_path / "nested" / "xla"  # created on demand
  first = _run(str(cache))
  assert first["used"] == str(cache)
  assert first["files"], "the compiled program was not written to the cache"
  # A second process finds the entry and writes nothing new.
  assert _run(str(cache))["files"] == first["files"]


def test_environment_wins_and_empty_turns_it_off():
  config = get_default_config()
  assert config.training.compilation_cache_dir  # on by default for user runs
  config.training.compilation_cache_dir = "/nonexistent/never/used"
  # tests/conftest.py sets JAX_COMPILATION_CACHE_DIR: it is kept, the config ignored.
  before = jax.config.jax_compilation_cache_dir
  assert before and enable_compilation_cache(config) == before
  assert jax.config.jax_compilation_cache_dir == before
  assert not os.path.exists("/nonexistent/never/used")
