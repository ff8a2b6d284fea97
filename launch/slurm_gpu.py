#!/usr/bin/env python3
r"""Write (or print) and submit an sbatch script for N nodes x G GPUs running lsgm_jax.

Process layout: one SLURM task, i.e. one JAX process, per GPU
(``--ntasks-per-node=G --gpus-per-node=G``). That is the layout
``jax.distributed.initialize()`` assumes under SLURM: with no arguments it reads
SLURM_NTASKS / SLURM_PROCID for the process count and id, takes the first node of the
step as coordinator, and gives each process the single local GPU number SLURM_LOCALID.
(One task per node would leave every process with GPU 0 only.) All tasks of a node see
all of its GPUs (``srun --gpu-bind=none``) so that GPU SLURM_LOCALID exists in each.
`lsgm_jax.main` calls `jax.distributed.initialize()` when SLURM_NTASKS > 1.

  python launch/slurm_gpu.py --nodes=2 --gpus-per-node=8 \
      --config=configs/cifar10_vp.py --workdir=/shared/runs/cifar10_vp \
      --setup='source .venv/bin/activate' --config.training.batch_size=512

`--dry-run` prints the script and the `sbatch` command and writes nothing. Otherwise
the script is written to --script (default: <log-dir>/<job-name>.sbatch) and submitted.
Each task logs to <log-dir>/<job-name>-<jobid>-<task>.log; `srun --kill-on-bad-exit=1`
stops every task when one fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(Exception):
  """A user error; reported as one `error: ...` line and exit status 2."""


def build_parser() -> argparse.ArgumentParser:
  """The argparse parser for this script."""
  parser = argparse.ArgumentParser(
      prog="slurm_gpu.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
      epilog="Config overrides: one argument each, --config.a.b=value (quote "
             "values with spaces). Other lsgm_jax.main flags go after --.")
  parser.add_argument("--config", required=True,
                      help="Config file[:variant], relative to --repo-dir.")
  parser.add_argument("--workdir", required=True,
                      help="Run directory on a filesystem every node sees.")
  parser.add_argument("--mode", default="train", choices=("train", "eval", "sample"))
  parser.add_argument("--nodes", type=int, default=1, help="Nodes (default: %(default)s).")
  parser.add_argument("--gpus-per-node", type=int, default=8,
                      help="GPUs per node = tasks per node (default: %(default)s).")
  parser.add_argument("--cpus-per-task", type=int, default=None,
                      help="CPU cores per task (input pipeline threads).")
  parser.add_argument("--time", default="24:00:00",
                      help="Wall-clock limit (default: %(default)s).")
  parser.add_argument("--job-name", default="lsgm", help="Default: %(default)s.")
  parser.add_argument("--partition", default=None)
  parser.add_argument("--account", default=None)
  parser.add_argument("--qos", default=None)
  parser.add_argument("--exclusive", action="store_true", help="Whole nodes only.")
  parser.add_argument("--repo-dir", default=REPO_ROOT,
                      help="The repo on the shared filesystem; the job runs there "
                           "(default: this checkout).")
  parser.add_argument("--log-dir", default="slurm_logs",
                      help="Log directory, relative to --repo-dir unless absolute "
                           "(default: %(default)s).")
  parser.add_argument("--python", default="python",
                      help="Interpreter on the nodes (default: %(default)s).")
  parser.add_argument("--setup", action="append", default=[], metavar="SHELL",
                      help="Shell line run before srun, e.g. 'module load cuda' or "
                           "'source .venv/bin/activate' (repeatable).")
  parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="Exported environment variable (repeatable).")
  parser.add_argument("--script", default=None,
                      help="Where to write the sbatch script "
                           "(default: <repo-dir>/<log-dir>/<job-name>.sbatch).")
  parser.add_argument("--dry-run", action="store_true",
                      help="Print the script and the sbatch command; write/submit nothing.")
  return parser


def _exports(env: Sequence[str]) -> list[str]:
  lines = []
  for item in env:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise LaunchError(f"--env {item!r} must look like KEY=VALUE")
    lines.append(f"export {key}={shlex.quote(value)}")
  return lines


def log_dir(args: argparse.Namespace) -> str:
  """The absolute log directory (SLURM does not create it; main() does)."""
  return os.path.join(args.repo_dir, args.log_dir)


def srun_command(args: argparse.Namespace, overrides: Sequence[str]) -> list[str]:
  """The srun argv that starts one lsgm_jax.main process per GPU."""
  log = os.path.join(log_dir(args), f"{args.job_name}-%j-%t.log")
  cmd = ["srun", "--kill-on-bad-exit=1", "--gpu-bind=none", f"--output={log}"]
  if args.cpus_per_task:
    # srun no longer inherits --cpus-per-task from sbatch (Slurm >= 22.05).
    cmd.append(f"--cpus-per-task={args.cpus_per_task}")
  return cmd + [args.python, "-m", "lsgm_jax.main", f"--config={args.config}",
                f"--workdir={args.workdir}", f"--mode={args.mode}", *overrides]


def build_script(args: argparse.Namespace, overrides: Sequence[str]) -> str:
  """The full sbatch script text."""
  if args.nodes < 1 or args.gpus_per_node < 1:
    raise LaunchError("--nodes and --gpus-per-node must be >= 1")
  g = args.gpus_per_node
  lines = [
      "#!/bin/bash",
      f"# Generated by launch/slurm_gpu.py: {args.nodes} node(s) x {g} GPU(s), "
      "one task (JAX process) per GPU.",
      f"#SBATCH --job-name={args.job_name}",
      f"#SBATCH --nodes={args.nodes}",
      f"#SBATCH --ntasks-per-node={g}",
      f"#SBATCH --gpus-per-node={g}",
  ]
  if args.cpus_per_task:
    lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
  lines.append(f"#SBATCH --time={args.time}")
  for flag in ("partition", "account", "qos"):
    if getattr(args, flag):
      lines.append(f"#SBATCH --{flag}={getattr(args, flag)}")
  if args.exclusive:
    lines.append("#SBATCH --exclusive")
  lines += [
      f"#SBATCH --chdir={args.repo_dir}",
      f"#SBATCH --output={os.path.join(log_dir(args), args.job_name)}-%j.out",
      "",
      "set -eo pipefail  # no -u: module/venv setup scripts often read unset variables",
      *args.setup,
      *_exports(args.env),
      shlex.join(srun_command(args, overrides)),
  ]
  return "\n".join(lines) + "\n"


def script_path(args: argparse.Namespace) -> str:
  """Where the script is written (and what `sbatch` is given)."""
  if args.script:
    return os.path.abspath(args.script)
  return os.path.join(log_dir(args), f"{args.job_name}.sbatch")


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point. Returns the process exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  passthrough: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, passthrough = argv[:cut], argv[cut + 1:]
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like "
                 "--config.a.b=value; put other lsgm_jax.main flags after --)")
  try:
    script = build_script(args, [*extra, *passthrough])
    path = script_path(args)
    submit = ["sbatch", path]
    if args.dry_run:
      sys.stdout.write(script)
      print(shlex.join(submit))
      return 0
    if shutil.which("sbatch") is None:
      raise LaunchError("'sbatch' not found on PATH; run this on a SLURM login node (or "
                        "pass --dry-run to only print the script)")
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(log_dir(args), exist_ok=True)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(script)
  print(f"+ {shlex.join(submit)}", file=sys.stderr, flush=True)
  return subprocess.run(submit, check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
