"""Two local processes (gloo CPU collectives) train like one process on the same
global batches."""

import socket
import subprocess

import jax
import numpy as np

from tests.helpers import REPO, main_command, run_main, subprocess_env
from tests.test_train import latest_state, smoke_config


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  common = ("--config.training.num_train_steps=6", "--config.checkpoint.async_save=False")
  port = free_port()
  multi = str(tmp_path / "multi")
  procs = [
      subprocess.Popen(
          main_command("configs/sgm_toy.py:smoke", multi, *common,
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={i}"),
          cwd=REPO, env=subprocess_env(1), stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2" in outputs[1]

  single = str(tmp_path / "single")
  proc = run_main("configs/sgm_toy.py:smoke", single, *common)
  assert proc.returncode == 0, proc.stderr[-3000:]

  config = smoke_config()
  state_multi, meta_multi = latest_state(multi, config)
  state_single, meta_single = latest_state(single, config)
  assert meta_multi["data_position"] == meta_single["data_position"] == 6
  for a, b in zip(jax.tree.leaves(state_multi.params), jax.tree.leaves(state_single.params)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-8)
