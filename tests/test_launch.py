"""Tests for launch/: the exact gcloud / sbatch commands each script prints or runs.

The scripts are standalone files (launch/ is not a package), so they are loaded from
their paths. Nothing here touches the network: dry runs print, and the non-dry-run
paths run against fake `gcloud` / `sbatch` executables written to a temporary PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
BASH = shutil.which("bash") or "/bin/bash"


def _load(name: str) -> ModuleType:
  spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_vm = _load("tpu_vm")
slurm_gpu = _load("slurm_gpu")

LOC = ["--zone=us-central2-b", "--project=my-proj"]
V4_8 = ["--name=lsgm", *LOC, "--accelerator-type=v4-8"]
V4_32 = ["--name=lsgm", *LOC, "--accelerator-type=v4-32"]
SSH = ("gcloud compute tpus tpu-vm ssh lsgm --zone=us-central2-b --project=my-proj "
       "--worker=all")
RUN_ARGS = ["--config=configs/cifar10_vp.py:smoke", "--workdir=gs://bkt/runs/c10",
            "--config.training.batch_size=64", "--config.eval.note=two words"]


@pytest.fixture(autouse=True)
def _no_real_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  """PATH is an empty folder, so a test can never reach a real gcloud or sbatch."""
  guard = tmp_path / "empty_path"
  guard.mkdir()
  monkeypatch.setenv("PATH", str(guard))


def _dry(capsys: pytest.CaptureFixture, module: ModuleType, argv: list[str]) -> list[str]:
  """Runs main() with --dry-run right after the subcommand; returns the printed lines."""
  head = argv[:1] if module is tpu_vm else []
  assert module.main([*head, "--dry-run", *argv[len(head):]]) == 0
  return capsys.readouterr().out.splitlines()


def _remote(line: str) -> str:
  """The --command=... text of a printed gcloud ssh line, as the remote shell sees it."""
  (command,) = [w for w in shlex.split(line) if w.startswith("--command=")]
  return command[len("--command="):]


@pytest.mark.parametrize("acc, hosts", [("v4-8", 1), ("v4-32", 4), ("v3-8", 1),
                                        ("v2-32", 4), ("v5p-128", 16),
                                        ("v5litepod-8", 1), ("v5litepod-16", 4),
                                        ("v6e-64", 16)])
def test_num_hosts(acc: str, hosts: int) -> None:
  assert tpu_vm.num_hosts(acc) == hosts
  assert tpu_vm.is_pod(acc) == (hosts > 1)


def test_create_single_host_and_pod(capsys: pytest.CaptureFixture) -> None:
  assert _dry(capsys, tpu_vm, ["create", *V4_8]) == [
      "gcloud compute tpus tpu-vm create lsgm --zone=us-central2-b --project=my-proj "
      "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base"]
  assert _dry(capsys, tpu_vm, ["create", *V4_32, "--spot"]) == [
      "gcloud compute tpus tpu-vm create lsgm --zone=us-central2-b --project=my-proj "
      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"]
  assert _dry(capsys, tpu_vm, ["create", "--name=x", "--accelerator-type=v5litepod-16",
                               "--preemptible"]) == [
      "gcloud compute tpus tpu-vm create x --accelerator-type=v5litepod-16 "
      "--version=v2-alpha-tpuv5-lite --preemptible"]


@pytest.mark.parametrize("acc_args", [V4_8, V4_32])
def test_setup_copies_and_installs_on_all_workers(capsys: pytest.CaptureFixture,
                                                  acc_args: list[str]) -> None:
  lines = _dry(capsys, tpu_vm, ["setup", *acc_args, "--source=/src/lsgm_jax"])
  assert lines == [
      f"{SSH} '--command=rm -rf ~/lsgm_jax'",
      "gcloud compute tpus tpu-vm scp /src/lsgm_jax lsgm:lsgm_jax --zone=us-central2-b "
      "--project=my-proj --worker=all --recurse",
      f"{SSH} '--command=cd ~/lsgm_jax && python3 -m pip install -e '\"'\"'.[tpu]'\"'\"''",
  ]
  assert _remote(lines[2]) == "cd ~/lsgm_jax && python3 -m pip install -e '.[tpu]'"


def test_setup_git_clone(capsys: pytest.CaptureFixture) -> None:
  lines = _dry(capsys, tpu_vm, ["setup", *V4_32, "--git-url=https://example.com/l.git",
                                "--git-ref=v1.0", "--extras="])
  assert [_remote(line) for line in lines] == [
      "rm -rf ~/lsgm_jax && git clone https://example.com/l.git ~/lsgm_jax"
      " && git -C ~/lsgm_jax checkout v1.0",
      "cd ~/lsgm_jax && python3 -m pip install -e .",
  ]
  assert all(line.startswith(SSH + " ") for line in lines)


TRAIN = ("python3 -m lsgm_jax.main --config=configs/cifar10_vp.py:smoke "
         "--workdir=gs://bkt/runs/c10 --mode=train --config.training.batch_size=64 "
         "'--config.eval.note=two words'")


@pytest.mark.parametrize("acc_args", [V4_8, V4_32])
def test_run_foreground(capsys: pytest.CaptureFixture, acc_args: list[str]) -> None:
  (line,) = _dry(capsys, tpu_vm, ["run", *acc_args, *RUN_ARGS])
  assert line == (
      f"{SSH} '--command=set -o pipefail; cd ~/lsgm_jax && "
      "python3 -m lsgm_jax.main --config=configs/cifar10_vp.py:smoke "
      "--workdir=gs://bkt/runs/c10 --mode=train --config.training.batch_size=64 "
      "'\"'\"'--config.eval.note=two words'\"'\"' 2>&1 | tee /tmp/lsgm_worker.log'")
  remote = _remote(line)
  assert remote == (
      f"set -o pipefail; cd ~/lsgm_jax && {TRAIN} 2>&1 | tee /tmp/lsgm_worker.log")
  # The remote shell hands the override with a space to absl as one argument.
  assert "--config.eval.note=two words" in shlex.split(remote)


def test_run_background_modes_and_passthrough(capsys: pytest.CaptureFixture) -> None:
  head = ["run", *V4_32, "--mode=sample", "--env=XLA_FLAGS=--a --b",
          "--config=configs/x.py", "--workdir=gs://b/r", "--config.s.note=it's"]
  tail = ["--", "--jax_log_compiles"]  # raw lsgm_jax.main flags after --
  (line,) = _dry(capsys, tpu_vm, [*head, "--background=nohup", *tail])
  trainer = ("XLA_FLAGS='--a --b' nohup python3 -m lsgm_jax.main --config=configs/x.py "
             "--workdir=gs://b/r --mode=sample '--config.s.note=it'\"'\"'s' "
             "--jax_log_compiles")
  assert _remote(line) == (
      f"cd ~/lsgm_jax && {{ {trainer} > /tmp/lsgm_worker.log 2>&1 < /dev/null & }}")

  (line,) = _dry(capsys, tpu_vm, [*head, "--background=tmux", *tail])
  words = shlex.split(_remote(line))
  assert words[:5] == ["tmux", "new-session", "-d", "-s", "lsgm"]
  assert len(words) == 6
  inner = words[5]
  assert inner.startswith("set -o pipefail; cd ~/lsgm_jax && XLA_FLAGS=")
  assert inner.endswith("2>&1 | tee /tmp/lsgm_worker.log")
  assert shlex.split(inner)[6:16] == [
      "XLA_FLAGS=--a --b", "python3", "-m", "lsgm_jax.main", "--config=configs/x.py",
      "--workdir=gs://b/r", "--mode=sample",
      "--config.s.note=it's", "--jax_log_compiles", "2>&1"]


def test_run_local_log_dir(capsys: pytest.CaptureFixture) -> None:
  (line,) = _dry(capsys, tpu_vm, ["run", *V4_32, *RUN_ARGS, "--local-log-dir=logs/c10"])
  assert line.startswith(f"{SSH} --output-directory=logs/c10 '--command=")


def test_run_pod_checks(capsys: pytest.CaptureFixture) -> None:
  assert tpu_vm.main(["run", *V4_32, "--config=c.py", "--workdir=/tmp/w", "--dry-run"]) == 2
  assert "must be a gs:// bucket path" in capsys.readouterr().err
  assert tpu_vm.main(["run", *V4_32, "--worker=0", "--config=c.py", "--workdir=gs://b/w",
                      "--dry-run"]) == 2
  assert "use --worker=all" in capsys.readouterr().err
  # A single host may use a local workdir.
  assert _dry(capsys, tpu_vm, ["run", *V4_8, "--config=c.py", "--workdir=/tmp/w"])
  assert tpu_vm.main(["run", "--dry-run", *V4_8, "--config=c.py", "--workdir=/tmp/w",
                      "--zoen=x"]) == 2
  assert "unrecognized argument '--zoen=x'" in capsys.readouterr().err


def test_logs_stop_exec_delete(capsys: pytest.CaptureFixture) -> None:
  (line,) = _dry(capsys, tpu_vm, ["logs", *V4_32, "--follow", "--lines=20"])
  assert _remote(line) == (
      'tail -n 20 -F /tmp/lsgm_worker.log | sed -u "s/^/[$(hostname)] /"')
  (line,) = _dry(capsys, tpu_vm, ["stop", *V4_32])
  assert _remote(line) == (
      "tmux kill-session -t lsgm 2>/dev/null; pkill -f 'lsgm_jax[.]main'; true")
  (line,) = _dry(capsys, tpu_vm, ["exec", *V4_32, "--", "nproc", "&&", "uptime"])
  assert line == f"{SSH} '--command=nproc && uptime'"
  for acc_args in (V4_8, V4_32):
    assert _dry(capsys, tpu_vm, ["delete", *acc_args]) == [
        "gcloud compute tpus tpu-vm delete lsgm --zone=us-central2-b --project=my-proj "
        "--quiet"]


def test_missing_gcloud_is_a_clear_error(capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setattr(tpu_vm.shutil, "which", lambda tool: None)
  monkeypatch.setattr(tpu_vm.subprocess, "run", lambda *a, **k: pytest.fail("ran"))
  assert tpu_vm.main(["delete", *V4_8]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: 'gcloud' not found on PATH") and err.count("\n") == 1


def test_missing_gcloud_cli() -> None:
  proc = subprocess.run([sys.executable, str(LAUNCH / "tpu_vm.py"), "create", *V4_8],
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2
  assert "'gcloud' not found on PATH" in proc.stderr and proc.stdout == ""


def _fake_tool(bin_dir: Path, name: str, fail_on: str = "") -> Path:
  """An executable that appends repr(argv) as one line to bin_dir/calls."""
  path = bin_dir / name
  path.write_text(
      f"#!{sys.executable}\nimport sys\n"
      f"open({str(bin_dir / 'calls')!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n"
      f"sys.exit(3 if {fail_on!r} and {fail_on!r} in ' '.join(sys.argv) else 0)\n")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return bin_dir / "calls"


def test_runs_gcloud_and_stops_at_first_failure(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
  calls = _fake_tool(tmp_path, "gcloud", fail_on="scp")
  monkeypatch.setenv("PATH", str(tmp_path))
  assert tpu_vm.main(["setup", *V4_32, "--source=/src/lsgm_jax"]) == 3
  recorded = calls.read_text().splitlines()
  assert len(recorded) == 2  # rm, scp (fails); install never ran
  assert recorded[1].startswith("['compute', 'tpus', 'tpu-vm', 'scp', '/src/lsgm_jax'")


SLURM_ARGS = ["--nodes=2", "--gpus-per-node=8", "--config=configs/cifar10_vp.py",
              "--workdir=/shared/runs/c10", "--repo-dir=/shared/lsgm_jax",
              "--setup=source .venv/bin/activate", "--config.training.batch_size=512",
              "--config.eval.note=two words"]


def test_slurm_dry_run(capsys: pytest.CaptureFixture) -> None:
  lines = _dry(capsys, slurm_gpu, [*SLURM_ARGS, "--partition=gpu", "--cpus-per-task=12"])
  assert lines[0] == "#!/bin/bash"
  sbatch = [line for line in lines if line.startswith("#SBATCH")]
  assert sbatch == [
      "#SBATCH --job-name=lsgm",
      "#SBATCH --nodes=2",
      "#SBATCH --ntasks-per-node=8",
      "#SBATCH --gpus-per-node=8",
      "#SBATCH --cpus-per-task=12",
      "#SBATCH --time=24:00:00",
      "#SBATCH --partition=gpu",
      "#SBATCH --chdir=/shared/lsgm_jax",
      "#SBATCH --output=/shared/lsgm_jax/slurm_logs/lsgm-%j.out",
  ]
  assert "source .venv/bin/activate" in lines
  assert lines[-2] == (
      "srun --kill-on-bad-exit=1 --gpu-bind=none "
      "--output=/shared/lsgm_jax/slurm_logs/lsgm-%j-%t.log --cpus-per-task=12 "
      "python -m lsgm_jax.main --config=configs/cifar10_vp.py --workdir=/shared/runs/c10 "
      "--mode=train --config.training.batch_size=512 '--config.eval.note=two words'")
  assert lines[-1] == "sbatch /shared/lsgm_jax/slurm_logs/lsgm.sbatch"


def test_slurm_submit_and_missing_sbatch(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
  argv = [*SLURM_ARGS[:4], f"--repo-dir={tmp_path}"]
  assert slurm_gpu.main(argv) == 2
  assert "'sbatch' not found on PATH" in capsys.readouterr().err
  assert not (tmp_path / "slurm_logs").exists()

  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = _fake_tool(bin_dir, "sbatch")
  monkeypatch.setenv("PATH", str(bin_dir))
  assert slurm_gpu.main(argv) == 0
  script = tmp_path / "slurm_logs" / "lsgm.sbatch"
  assert calls.read_text().splitlines() == [repr([str(script)])]
  assert "#SBATCH --ntasks-per-node=8" in script.read_text()


def test_slurm_rejects_unknown_flag() -> None:
  with pytest.raises(SystemExit):
    slurm_gpu.main([*SLURM_ARGS, "--gpus=8", "--dry-run"])


def test_shell_wrappers() -> None:
  env = {**os.environ, "PYTHON": sys.executable}
  proc = subprocess.run([BASH, str(LAUNCH / "tpu_pod.sh"), "delete", *V4_32, "--dry-run"],
                        env=env, capture_output=True, text=True, timeout=30, check=True)
  assert proc.stdout == (
      "gcloud compute tpus tpu-vm delete lsgm --zone=us-central2-b --project=my-proj "
      "--quiet\n")
  subprocess.run([BASH, "-n", str(LAUNCH / "slurm_gpu.sbatch")], check=True, timeout=30)
