#!/usr/bin/env python3
r"""Create, set up, run on and delete a Cloud TPU VM or TPU pod slice with `gcloud`.

Every subcommand builds a list of `gcloud compute tpus tpu-vm ...` commands and either
prints them (`--dry-run`, no network, nothing executed) or runs them one after the other,
stopping at the first failure. Only the standard library is used, so this file runs on
any laptop with Python 3 and the Google Cloud SDK:

  python launch/tpu_vm.py create --name=lsgm --zone=us-central2-b --accelerator-type=v4-32
  python launch/tpu_vm.py setup  --name=lsgm --zone=us-central2-b
  python launch/tpu_vm.py run    --name=lsgm --zone=us-central2-b --accelerator-type=v4-32 \
      --config=configs/cifar10_vp.py --workdir=gs://my-bucket/runs/cifar10_vp \
      --config.training.batch_size=512
  python launch/tpu_vm.py logs   --name=lsgm --zone=us-central2-b --follow
  python launch/tpu_vm.py delete --name=lsgm --zone=us-central2-b

Single host or pod slice is decided by the accelerator type (v4-8 is one host, v4-32
is four). Commands that touch the workers always pass `--worker=all` (the default of
`--worker`): on a single host that is worker 0, on a pod slice every host must run the
same `python -m lsgm_jax.main`, since each one is a JAX process that joins
`jax.distributed.initialize()`.
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

Command = list[str]

GCLOUD_TPU = ("gcloud", "compute", "tpus", "tpu-vm")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REMOTE_DIR = "~/lsgm_jax"
DEFAULT_LOG_FILE = "/tmp/lsgm_worker.log"
DEFAULT_TMUX_SESSION = "lsgm"
# Matches the training processes but not the shell that runs `pkill` (whose own command
# line holds the literal text `lsgm_jax[.]main`, which the regex does not match).
TRAINER_PATTERN = "lsgm_jax[.]main"

# Runtime (software) version per TPU generation, used when --version is not given.
_RUNTIME_BY_GENERATION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}


class LaunchError(Exception):
  """A user error; reported as one `error: ...` line and exit status 2."""


def parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
  """Splits e.g. ``"v4-32"`` into ``("v4", 32)``; raises LaunchError if malformed."""
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type)
  if not match:
    raise LaunchError(
        f"--accelerator-type={accelerator_type!r} does not look like GENERATION-SIZE "
        "(e.g. v4-8, v4-32, v5litepod-16, v6e-8)")
  return match.group(1), int(match.group(2))


def num_hosts(accelerator_type: str) -> int:
  """Number of TPU VM hosts (= JAX processes) in a slice of ``accelerator_type``.

  v2/v3/v4/v5p sizes count TensorCores, 8 per host (v4-8: 1 host, v4-32: 4 hosts);
  v5e (v5litepod) and v6e sizes count chips: up to 8 on one host, else 4 per host.
  """
  generation, size = parse_accelerator_type(accelerator_type)
  if generation in ("v5litepod", "v5e", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


def is_pod(accelerator_type: str) -> bool:
  """True for a multi-host pod slice (e.g. v4-32), False for one TPU VM (e.g. v4-8)."""
  return num_hosts(accelerator_type) > 1


def default_runtime_version(accelerator_type: str) -> str:
  """The TPU VM base image to use for ``accelerator_type`` when --version is not given."""
  generation, _ = parse_accelerator_type(accelerator_type)
  return _RUNTIME_BY_GENERATION.get(generation, "tpu-ubuntu2204-base")


def remote_path(path: str) -> str:
  """Shell-quotes a path for the remote shell while keeping a leading ``~/`` expandable."""
  if path == "~":
    return "~"
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def scp_destination(path: str) -> str:
  """A remote scp path: ``~/x`` becomes ``x`` (scp paths are relative to the home dir)."""
  return path[2:] if path.startswith("~/") else path


def env_assignments(env: Sequence[str]) -> list[str]:
  """Turns ``KEY=VALUE`` strings into shell assignments with the value quoted."""
  out = []
  for item in env:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise LaunchError(f"--env {item!r} must look like KEY=VALUE")
    out.append(f"{key}={shlex.quote(value)}")
  return out


def split_overrides(extra: Sequence[str], passthrough: Sequence[str]) -> list[str]:
  """Validates config overrides left over by argparse.

  Args:
    extra: unrecognised arguments; each must be a ``--config.a.b=value`` override.
    passthrough: arguments after a literal ``--``; passed to lsgm_jax.main unchecked.

  Returns:
    The arguments to append to ``python -m lsgm_jax.main``, in order.
  """
  for arg in extra:
    if not arg.startswith("--config."):
      raise LaunchError(
          f"unrecognized argument {arg!r} (config overrides look like "
          "--config.a.b=value; put other lsgm_jax.main flags after --)")
  return [*extra, *passthrough]


def _location_flags(args: argparse.Namespace) -> list[str]:
  flags = []
  if args.zone:
    flags.append(f"--zone={args.zone}")
  if args.project:
    flags.append(f"--project={args.project}")
  return flags


def ssh_command(args: argparse.Namespace, remote: str, worker: str | None = None,
                extra_flags: Sequence[str] = ()) -> Command:
  """`gcloud ... ssh NAME --worker=W --command=REMOTE` (REMOTE runs in the login shell)."""
  cmd = [*GCLOUD_TPU, "ssh", args.name, *_location_flags(args),
         f"--worker={worker or args.worker}"]
  if args.internal_ip:
    cmd.append("--internal-ip")
  return [*cmd, *extra_flags, f"--command={remote}"]


def python_command(args: argparse.Namespace, module_args: Sequence[str]) -> str:
  """The shell text ``[ENV=..] PYTHON -m lsgm_jax.main ARGS`` with every argument quoted."""
  words = [remote_path(args.python), "-m", "lsgm_jax.main"]
  words += [shlex.quote(a) for a in module_args]
  return " ".join(words)


# ----------------------------------------------------------------------------------
# Subcommands: each returns the list of commands to run.


def cmd_create(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Creates the TPU VM / pod slice."""
  del overrides
  version = args.version or default_runtime_version(args.accelerator_type)
  cmd = [*GCLOUD_TPU, "create", args.name, *_location_flags(args),
         f"--accelerator-type={args.accelerator_type}", f"--version={version}"]
  if args.spot:
    cmd.append("--spot")
  if args.preemptible:
    cmd.append("--preemptible")
  return [cmd]


def cmd_setup(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Copies (or clones) the repo to every worker and installs it there."""
  del overrides
  rdir = remote_path(args.remote_dir)
  commands = []
  if args.git_url:
    clone = f"rm -rf {rdir} && git clone {shlex.quote(args.git_url)} {rdir}"
    if args.git_ref:
      clone += f" && git -C {rdir} checkout {shlex.quote(args.git_ref)}"
    commands.append(ssh_command(args, clone))
  else:
    # The remote copy is removed first: `scp -r SRC host:DIR` nests SRC inside DIR when
    # DIR already exists, so a second `setup` would otherwise not update the code.
    commands.append(ssh_command(args, f"rm -rf {rdir}"))
    source = os.path.abspath(args.source)
    commands.append([*GCLOUD_TPU, "scp", source,
                     f"{args.name}:{scp_destination(args.remote_dir)}",
                     *_location_flags(args), f"--worker={args.worker}", "--recurse"]
                    + (["--internal-ip"] if args.internal_ip else []))
  install = (f"cd {rdir} && {remote_path(args.python)} -m pip install -e "
             + shlex.quote(f".[{args.extras}]" if args.extras else "."))
  commands.append(ssh_command(args, install))
  return commands


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Starts `python -m lsgm_jax.main` on every worker at the same time."""
  if is_pod(args.accelerator_type):
    if args.worker != "all":
      raise LaunchError(
          f"{args.accelerator_type} is a pod slice with {num_hosts(args.accelerator_type)} "
          "hosts: every host must run the trainer, so use --worker=all")
    if not args.workdir.startswith("gs://"):
      raise LaunchError(
          f"--workdir={args.workdir!r}: on a pod slice every host writes checkpoints to "
          "the same workdir, so it must be a gs:// bucket path")
  module_args = [f"--config={args.config}", f"--workdir={args.workdir}",
                 f"--mode={args.mode}", *overrides]
  env = " ".join(env_assignments(args.env))
  prefix = env + " " if env else ""
  trainer = prefix + python_command(args, module_args)
  cd = f"cd {remote_path(args.remote_dir)}"
  log = shlex.quote(args.log_file)
  if args.background == "nohup":
    # All three streams are redirected so that ssh returns while the trainer runs on.
    trainer = prefix + "nohup " + python_command(args, module_args)
    remote = f"{cd} && {{ {trainer} > {log} 2>&1 < /dev/null & }}"
  elif args.background == "tmux":
    inner = f"set -o pipefail; {cd} && {trainer} 2>&1 | tee {log}"
    remote = (f"tmux new-session -d -s {shlex.quote(args.tmux_session)} "
              f"{shlex.quote(inner)}")
  else:
    remote = f"set -o pipefail; {cd} && {trainer} 2>&1 | tee {log}"
  extra = []
  if args.local_log_dir:
    extra.append(f"--output-directory={args.local_log_dir}")
  return [ssh_command(args, remote, extra_flags=extra)]


def cmd_logs(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Prints (or follows) the per-worker log, each line prefixed by the worker's hostname."""
  del overrides
  tail = f"tail -n {args.lines}" + (" -F" if args.follow else "")
  remote = f"{tail} {shlex.quote(args.log_file)} | sed -u \"s/^/[$(hostname)] /\""
  return [ssh_command(args, remote)]


def cmd_stop(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Stops the trainer on every worker (SIGTERM, so it can save a preemption checkpoint)."""
  del overrides
  remote = (f"tmux kill-session -t {shlex.quote(args.tmux_session)} 2>/dev/null; "
            f"pkill -f {shlex.quote(TRAINER_PATTERN)}; true")
  return [ssh_command(args, remote)]


def cmd_exec(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Runs an arbitrary shell command (the words after --) on the workers."""
  if not overrides:
    raise LaunchError("exec needs a command after --, e.g. exec --name=x -- nproc")
  return [ssh_command(args, " ".join(overrides))]


def cmd_delete(args: argparse.Namespace, overrides: list[str]) -> list[Command]:
  """Deletes the TPU VM / pod slice without a confirmation prompt."""
  del overrides
  return [[*GCLOUD_TPU, "delete", args.name, *_location_flags(args), "--quiet"]]


_SUBCOMMANDS = {
    "create": cmd_create, "setup": cmd_setup, "run": cmd_run, "logs": cmd_logs,
    "stop": cmd_stop, "exec": cmd_exec, "delete": cmd_delete,
}
_TAKES_OVERRIDES = ("run", "exec")


def build_parser() -> argparse.ArgumentParser:
  """The argparse parser with one subparser per subcommand."""
  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument("--name", required=True, help="TPU VM / pod slice name.")
  common.add_argument("--zone", default=None,
                      help="e.g. us-central2-b (default: gcloud's compute/zone).")
  common.add_argument("--project", default=None,
                      help="GCP project (default: gcloud's core/project).")
  common.add_argument("--accelerator-type", default="v4-8",
                      help="e.g. v4-8 (one host) or v4-32 (4-host pod slice); decides "
                           "single host vs pod (default: %(default)s).")
  common.add_argument("--dry-run", action="store_true",
                      help="Print the commands, one per line, instead of running them.")

  workers = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  workers.add_argument("--worker", default="all",
                       help="Worker(s) for ssh/scp: 'all' (default; required on pods) "
                            "or an index such as 0.")
  workers.add_argument("--internal-ip", action="store_true",
                       help="Connect over the internal IP (from a VM in the same VPC).")
  workers.add_argument("--remote-dir", default=DEFAULT_REMOTE_DIR,
                       help="Where the repo lives on each worker (default: %(default)s).")
  workers.add_argument("--python", default="python3",
                       help="Python interpreter on the workers (default: %(default)s).")
  workers.add_argument("--log-file", default=DEFAULT_LOG_FILE,
                       help="Per-worker log file on each worker (default: %(default)s).")
  workers.add_argument("--tmux-session", default=DEFAULT_TMUX_SESSION,
                       help="tmux session name for run/stop (default: %(default)s).")

  parser = argparse.ArgumentParser(
      prog="tpu_vm.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

  def add(name: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    doc = _SUBCOMMANDS[name].__doc__.splitlines()[0]
    return sub.add_parser(name, parents=parents, help=doc, description=doc,
                          allow_abbrev=False)

  create = add("create", [common])
  create.add_argument("--version", default=None,
                      help="TPU runtime, e.g. tpu-ubuntu2204-base (default: by "
                           "generation; v4 -> tpu-ubuntu2204-base).")
  capacity = create.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="Spot capacity.")
  capacity.add_argument("--preemptible", action="store_true",
                        help="Preemptible capacity.")

  setup = add("setup", [common, workers])
  setup.add_argument("--source", default=REPO_ROOT,
                     help="Local repo to copy with scp --recurse (default: this checkout).")
  setup.add_argument("--git-url", default=None,
                     help="Clone this URL on every worker instead of copying --source.")
  setup.add_argument("--git-ref", default=None, help="Branch, tag or commit to check out.")
  setup.add_argument("--extras", default="tpu",
                     help="pip extras to install, '' for none (default: %(default)s).")

  run = add("run", [common, workers])
  run.add_argument("--config", required=True,
                   help="Config file[:variant], relative to the repo, e.g. "
                        "configs/cifar10_vp.py:smoke.")
  run.add_argument("--workdir", required=True,
                   help="Run directory; gs://bucket/path (required on pods).")
  run.add_argument("--mode", default="train", choices=("train", "eval", "sample"))
  run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="Environment variable for the trainer (repeatable).")
  run.add_argument("--background", default="none", choices=("none", "nohup", "tmux"),
                   help="none: stream output here and tee it to --log-file; nohup/tmux: "
                        "detach and only write --log-file (default: %(default)s).")
  run.add_argument("--local-log-dir", default=None,
                   help="Write each worker's output to DIR/<worker>.log on this machine "
                        "(gcloud --output-directory) instead of the terminal.")
  run.epilog = ("Config overrides: one argument each, --config.a.b=value "
                "(quote values with spaces). Other lsgm_jax.main flags go after --.")

  logs = add("logs", [common, workers])
  logs.add_argument("--lines", type=int, default=100,
                    help="Lines to show per worker (default: %(default)s).")
  logs.add_argument("--follow", action="store_true", help="Keep following (tail -F).")

  add("stop", [common, workers])
  exec_ = add("exec", [common, workers])
  exec_.epilog = ("Example: tpu_vm.py exec --name=x -- "
                  "python3 -c \"'import jax; print(jax.device_count())'\"")
  add("delete", [common])
  return parser


def format_command(cmd: Command) -> str:
  """A command as one copy-pasteable shell line."""
  return shlex.join(cmd)


def require_tool(tool: str, hint: str) -> None:
  """Raises LaunchError naming ``tool`` when it is not on PATH."""
  if shutil.which(tool) is None:
    raise LaunchError(f"{tool!r} not found on PATH; {hint} (or pass --dry-run to only "
                      "print the commands)")


def execute(commands: Sequence[Command]) -> int:
  """Runs the commands in order; returns the first non-zero exit status, else 0."""
  for cmd in commands:
    print(f"+ {format_command(cmd)}", file=sys.stderr, flush=True)
    status = subprocess.run(cmd, check=False).returncode
    if status != 0:
      print(f"error: exit status {status} from: {format_command(cmd)}", file=sys.stderr)
      return status
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point. Returns the process exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  passthrough: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, passthrough = argv[:cut], argv[cut + 1:]
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  try:
    if args.subcommand in _TAKES_OVERRIDES:
      overrides = (list(passthrough) if args.subcommand == "exec"
                   else split_overrides(extra, passthrough))
      if args.subcommand == "exec" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    else:
      if extra or passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra + passthrough)}")
      overrides = []
    if args.subcommand == "setup" and args.git_ref and not args.git_url:
      raise LaunchError("--git-ref needs --git-url")
    commands = _SUBCOMMANDS[args.subcommand](args, overrides)
    if args.dry_run:
      for cmd in commands:
        print(format_command(cmd))
      return 0
    require_tool("gcloud", "install the Google Cloud SDK "
                 "(https://cloud.google.com/sdk/docs/install)")
    if args.subcommand == "run" and args.local_log_dir:
      os.makedirs(args.local_log_dir, exist_ok=True)
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return execute(commands)


if __name__ == "__main__":
  sys.exit(main())
