"""Entry point: ``python -m lsgm_jax.main --config=configs/X.py[:variant] --workdir=DIR
--mode=train|eval|sample [--config.a.b=value ...]``.

Thin on purpose: flags, distributed init, the process layout, then ``lsgm_jax.train``.
A bad config field, a missing dataset or a wrong checkpoint exits with one line on
stderr (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import enum
import os
import re
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
  ENCODE = "encode"  # first stage: write <workdir>/latents (lsgm_jax.encode_latents)
  FID_STATS = "fid_stats"  # reference statistics of config.eval.fid_split (evaluation)


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


def config_error_line(error: BaseException, argv: list[str]) -> str:
  """One line for a config that failed to load: the field, and a suggestion if any."""
  text = str(error).replace("\\n", " ").strip("'\" ")
  unknown = re.search(r'Key "([^"]+)" does not exist', text)
  if unknown:
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return (f"unknown config field {unknown.group(1)!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  if isinstance(error, (AttributeError, KeyError)):
    name = text.strip("'\"")
    for arg in argv:
      match = re.match(r"--config\.([\w.]+)=", arg)
      if match and match.group(1).split(".")[-1] == name:
        return f"unknown config field 'config.{match.group(1)}' (from {arg})"
    return f"unknown config field {name!r}"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  line = re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else type(error).__name__
  for arg in argv:  # name the override whose value failed to parse
    match = re.match(r"--config\.([\w.]+)=(.*)", arg)
    if match and match.group(2) and repr(match.group(2))[1:-1] in line:
      return f"invalid value in {arg}: {line}"
  return line


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-file and override errors as one line (exit 2)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cause = e.__cause__ or e.__context__ or e
    print(f"lsgm_jax: error: {config_error_line(cause, argv)}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # a config file that raises while loading  # noqa: BLE001
    print(f"lsgm_jax: error: {config_error_line(e, argv)}", file=sys.stderr)
    sys.exit(2)


def run(config, workdir: str, mode: Mode):
  """Runs one mode; the importable core of ``main`` (tests call it directly)."""
  from lsgm_jax import config_checks, train
  config_checks.check_config(config)
  if mode is Mode.TRAIN:
    return train.train(config, workdir)
  if mode is Mode.EVAL:
    return train.evaluate(config, workdir)
  if mode is Mode.ENCODE:
    from lsgm_jax import encode_latents
    return encode_latents.encode(config, workdir)
  if mode is Mode.FID_STATS:
    from lsgm_jax.evaluation import sample_quality
    return sample_quality.compute_reference_stats(config, workdir)
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
  app.run(main, flags_parser=parse_flags)
