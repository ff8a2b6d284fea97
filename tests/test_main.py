"""The entry point end to end, and bad input as one clear line (exit code 2)."""

import json
import os

import numpy as np

from tests.helpers import run_main


def error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.startswith("lsgm_jax: error:")]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  return lines[0]


def test_train_sample_eval_from_the_command_line(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_main("configs/sgm_toy.py:smoke", workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "lsgm_jax train: method sgm, 54,274 parameters" in proc.stderr
  assert "step 20/20 | loss " in proc.stderr and "ETA 0:00:00" in proc.stderr
  proc = run_main("configs/sgm_toy.py:smoke", workdir, "--mode=sample",
                  "--config.sampling.num_samples=300")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(workdir, "samples", "step_20")
  samples = np.load(os.path.join(out, "samples.npz"))["samples"]
  assert samples.shape == (300, 2) and np.all(np.isfinite(samples))
  assert os.path.getsize(os.path.join(out, "samples.png")) > 1000
  proc = run_main("configs/sgm_toy.py:smoke", workdir, "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "eval_step_20.json")) as f:
    metrics = json.load(f)
  assert metrics["step"] == 20 and np.isfinite(metrics["dsm"]) and metrics["dsm"] > 0
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "eval")))


def test_unknown_override_field(tmp_path):
  line = error_line(run_main("configs/sgm_toy.py:smoke", str(tmp_path),
                             "--config.training.nope=1"))
  assert "unknown config field 'config.training.nope'" in line


def test_unknown_field_in_a_config_file(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text(
      "from lsgm_jax.config_defaults import get_default_config\n"
      "def get_config():\n  c = get_default_config()\n  c.training.bach_size = 8\n  return c\n")
  line = error_line(run_main(str(path), str(tmp_path / "w")))
  assert "unknown config field 'bach_size' (did you mean 'batch_size'?)" in line


def test_invalid_value(tmp_path):
  line = error_line(run_main("configs/sgm_toy.py:smoke", str(tmp_path),
                             "--config.sde.name=vpsdee"))
  assert "config.sde.name='vpsdee' is not one of" in line


def test_missing_dataset_names_the_builder(tmp_path):
  line = error_line(run_main(
      "configs/sgm_digits.py:smoke", str(tmp_path / "w"), "--config.data.name=cifar10",
      "--config.data.image_size=32", "--config.data.num_channels=3",
      f"--config.data.data_dir={tmp_path / 'no_data'}"))
  assert "cifar10" in line and "tfds build" in line


def test_sampling_without_a_checkpoint(tmp_path):
  line = error_line(run_main("configs/sgm_toy.py:smoke", str(tmp_path / "empty"),
                             "--mode=sample"))
  assert "no checkpoint in" in line and "--mode=train" in line
