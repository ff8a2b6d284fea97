"""Entry point: ``python -m lsgm_jax.main --config=configs/X.py[:variant] --workdir=DIR
--mode=train|eval|sample [--config.a.b=value ...]``.

Thin on purpose: flags, distributed init, the process layout, then ``lsgm_jax.train``.
A bad config field, a missing dataset or a wrong checkpoint exits with one line on
stderr (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import enum
import os
import sys

# TensorFlow (tf.data, clu's writers) must never take accelerator memory; hide
# accelerators from it before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402


class Mode(enum.Enum):
  TRAIN = "train"
  EVAL = "eval"
  SAMPLE = "sample"


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/<name>.py[:variant]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
_MODE = flags.DEFINE_enum_class("mode", Mode.TRAIN, Mode, "What to do.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 (multi-process runs without "
    "auto-detection; TPU pods and SLURM are detected automatically).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")

flags.mark_flags_as_required(["config", "workdir"])


def hide_accelerators_from_tensorflow() -> None:
  import tensorflow as tf
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass


def run(config, workdir: str, mode: Mode):
  """Runs one mode; the importable core of ``main`` (tests call it directly)."""
  from lsgm_jax import config_checks, train
  config_checks.check_config(config)
  if mode is Mode.TRAIN:
    return train.train(config, workdir)
  if mode is Mode.EVAL:
    return train.evaluate(config, workdir)
  return train.sample(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  hide_accelerators_from_tensorflow()
  from lsgm_jax import checkpoint, parallel, train
  from lsgm_jax.config_checks import ConfigError

  parallel.maybe_initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax
  if jax.process_index() == 0:
    os.makedirs(_WORKDIR.value, exist_ok=True) if "://" not in _WORKDIR.value else None
  logging.info("process %d of %d, mode %s, workdir %s", jax.process_index(),
               jax.process_count(), _MODE.value.value, _WORKDIR.value)
  try:
    run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except (ConfigError, checkpoint.CheckpointMismatchError, train.SkipLimitError,
          FileNotFoundError, ValueError) as e:
    print(f"lsgm_jax: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
