"""Entry point: ``python -m lsgm_jax.main --config=configs/X.py[:variant] --workdir=DIR
--mode=train|eval|sample|import [--config.a.b=value ...]``.

Thin on purpose: flags, distributed init, the process layout, then ``lsgm_jax.train``.
A bad config field, a missing dataset, a wrong checkpoint or a busy workdir exits with
one line on stderr and exit code 2; a storage fault (read-only or full disk, a workdir
that is a file, I/O errors) with one line and exit code 3. A run stopped by SIGTERM or
Ctrl-C saves at the next step boundary and exits 0.
"""

from __future__ import annotations

import enum
import os
import re
import sys

from lsgm_jax import signals  # first: a signal during the slow imports below is kept

signals.install_early()

# TensorFlow (tf.data, clu's writers) must never take accelerator memory; hide
# accelerators from it before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its start-up note, see console.py

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402


class Mode(enum.Enum):
  TRAIN = "train"
  EVAL = "eval"
  SAMPLE = "sample"
  ENCODE = "encode"  # first stage: write <workdir>/latents (lsgm_jax.encode_latents)
  FID_STATS = "fid_stats"  # reference statistics of config.eval.fid_split (evaluation)
  IMPORT = "import"  # a reference's released checkpoint -> <workdir>/checkpoints (issue 12)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/<name>.py[:variant]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
_MODE = flags.DEFINE_enum_class("mode", Mode.TRAIN, Mode, "What to do.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "", "eval / sample: write results here instead of the workdir (for "
    "a read-only checkpoint directory).")
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
  from lsgm_jax import config_errors
  line = config_errors.check_file(argv)
  if line:
    print(f"lsgm_jax: error: {line}", file=sys.stderr)
    sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cause = e.__cause__ or e.__context__ or e
    line = config_errors.diagnose(argv) or config_error_line(cause, argv)
  except Exception as e:  # a config file that raises while loading  # noqa: BLE001
    line = config_errors.diagnose(argv) or config_error_line(e, argv)
  print(f"lsgm_jax: error: {line}", file=sys.stderr)
  sys.exit(2)


EXIT_BAD_INPUT = 2  # a config field, flag, dataset, checkpoint path or busy workdir
EXIT_STORAGE = 3  # the workdir's storage failed: read-only, full, not a directory, I/O


def run(config, workdir: str, mode: Mode, output_dir: str = ""):
  """Runs one mode; the importable core of ``main`` (tests call it directly).
  ``output_dir`` (eval / sample): where results go instead of ``workdir``."""
  from lsgm_jax import config_checks, train
  config_checks.check_config(config)
  if mode is Mode.TRAIN:
    return train.train(config, workdir)
  if mode is Mode.EVAL:
    return train.evaluate(config, workdir, output_dir=output_dir or None)
  if mode is Mode.ENCODE:
    from lsgm_jax import encode_latents
    return encode_latents.encode(config, workdir)
  if mode is Mode.IMPORT:
    from lsgm_jax.checkpoint_import import driver
    return driver.import_checkpoint(config, workdir)
  if mode is Mode.FID_STATS:
    from lsgm_jax.evaluation import sample_quality
    return sample_quality.compute_reference_stats(config, workdir)
  return train.sample(config, workdir, output_dir=output_dir or None)


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text or type(error).__name__


def _ignore_closed_event_loop(kind, value, tb):
  """After a failed asynchronous checkpoint write, tensorstore's callbacks still reach
  Orbax's closed asyncio loop and print one "Event loop is closed" traceback each
  (through ``sys.excepthook``); the failure itself is reported once, as one line."""
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return
  sys.__excepthook__(kind, value, tb)


def check_workdir(workdir: str, mode: Mode) -> None:
  """One line for a workdir that cannot hold a run: a file, or under a file."""
  if "://" in workdir:
    return
  path = os.path.abspath(workdir)
  probe = path
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if probe and not os.path.isdir(probe):
    what = "is a file" if probe == path else f"is under a file ({probe})"
    print(f"lsgm_jax: error: --workdir={workdir} {what}; choose a directory",
          file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  if mode is Mode.TRAIN or mode is Mode.ENCODE:
    os.makedirs(path, exist_ok=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lsgm_jax import console
  console.quiet_libraries()
  sys.excepthook = _ignore_closed_event_loop
  hide_accelerators_from_tensorflow()
  import tensorflow as tf
  from lsgm_jax import checkpoint, parallel, train
  from lsgm_jax.config_checks import ConfigError
  from lsgm_jax.workdir_lock import WorkdirLockedError

  parallel.maybe_initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax
  if jax.process_count() > 1:
    logging.info("process %d of %d, mode %s, workdir %s", jax.process_index(),
                 jax.process_count(), _MODE.value.value, _WORKDIR.value)
  try:
    if jax.process_index() == 0:
      check_workdir(_WORKDIR.value, _MODE.value)
    from lsgm_jax.compile_cache import enable_compilation_cache
    cache = enable_compilation_cache(_CONFIG.value)  # before anything compiles
    logging.info("XLA compilation cache: %s", cache or "off")
    run(_CONFIG.value, _WORKDIR.value, _MODE.value, _OUTPUT_DIR.value)
  except (ConfigError, checkpoint.CheckpointMismatchError, train.SkipLimitError,
          FileNotFoundError, ValueError, WorkdirLockedError) as e:
    print(f"lsgm_jax: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  except (OSError, tf.errors.OpError) as e:  # storage: read-only, full, I/O errors
    print(f"lsgm_jax: error: storage: {_one_line(e)} (workdir {_WORKDIR.value})",
          file=sys.stderr)
    sys.exit(EXIT_STORAGE)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
