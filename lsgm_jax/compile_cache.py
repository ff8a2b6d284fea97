"""The persistent XLA compilation cache for user runs.

The paper-size programs (train step, state initialisation, samplers) take tens of
seconds to minutes to compile; a resumed run, an eval or sample run after training and
every rerun of the same config compile exactly the same programs again. JAX can keep the
compiled executables on disk, keyed by the program, the JAX/XLA version, the device and
the compiler flags (so a code or config change that alters a program is a new entry,
never a stale hit).

``config.training.compilation_cache_dir`` (default ``~/.cache/lsgm_jax/xla``: on, per
user, outside any workdir, so separate runs share it; ``""`` turns it off) and
``config.training.compilation_cache_min_compile_s`` (only programs that took at least
this long are written: the many small eager programs would cost more to store than to
compile). The environment variable ``JAX_COMPILATION_CACHE_DIR`` (or an earlier
``jax.config.update``) wins over the config, as the test suite relies on.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from absl import logging

# LRU-evicted beyond this (local filesystems; JAX needs the ``filelock`` package for it,
# without it the cache is unbounded): a paper-size train step is tens of MB.
MAX_CACHE_BYTES = 8 * 2**30


def enable_compilation_cache(config: ml_collections.ConfigDict) -> str | None:
  """Points JAX's persistent compilation cache at the configured directory.

  Call before anything is compiled (JAX decides once, at its first compile, whether a
  cache is in use).

  Args:
    config: the run's config (reads ``training.compilation_cache_dir`` and
      ``training.compilation_cache_min_compile_s``).

  Returns:
    The cache directory in use (possibly set by the environment), or ``None`` if off.
  """
  import jax
  current = jax.config.jax_compilation_cache_dir
  if current:  # JAX_COMPILATION_CACHE_DIR or an explicit update: leave it alone
    return current
  directory = str(config.training.compilation_cache_dir)
  if not directory:
    return None
  if "://" not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:  # a speed-up only: never stop a run for it
      logging.warning("XLA compilation cache off: cannot create %s (%s)", directory, e)
      return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(config.training.compilation_cache_min_compile_s))
  if importlib.util.find_spec("filelock") is not None:
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
  return directory
