"""Operations (issue 15): one trainer per workdir, damaged checkpoints moved aside and the
next older one used, retention that preemption saves cannot break, no overwrites."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from lsgm_jax import checkpoint, train
from lsgm_jax.workdir_lock import WorkdirLock, WorkdirLockedError
from tests.helpers import smoke_config




def one_device():
  return jax.devices()[:1]


def test_second_trainer_on_a_workdir_is_refused_with_the_holder_named(tmp_path):
  workdir = str(tmp_path)
  config = smoke_config(**{"training.num_train_steps": 2})
  with WorkdirLock(workdir):  # a live trainer (this process, another open file)
    with pytest.raises(WorkdirLockedError) as info:
      train.train(config, workdir, devices=one_device())
  message = str(info.value)
  assert f"pid {os.getpid()}" in message and "since" in message and "\n" not in message
  assert not os.path.exists(os.path.join(workdir, "checkpoints")), "refused before writing"


def test_stale_lock_of_a_dead_trainer_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, ".lock"), "w") as f:  # left by a SIGKILLed trainer
    json.dump({"host": "gone-host", "pid": 999999, "since": "2026-01-01T00:00:00"}, f)
  caplog.set_level(logging.WARNING)
  with WorkdirLock(workdir):
    with pytest.raises(WorkdirLockedError):
      WorkdirLock(workdir).__enter__()
  assert any("gone-host" in r.getMessage() and "pid 999999" in r.getMessage()
             for r in caplog.records)
  with open(os.path.join(workdir, ".lock")) as f:
    assert f.read() == "", "a clean release leaves nothing stale behind"


def test_remote_lease_refuses_a_live_holder_and_takes_over_an_expired_one(tmp_path,
                                                                         monkeypatch):
  from lsgm_jax import workdir_lock
  workdir = "file://" + str(tmp_path)  # "://": the object-store (lease) path
  monkeypatch.setattr(workdir_lock.WorkdirLock, "_lease_path",
                      lambda self: __import__("etils").epath.Path(tmp_path) / "lock.json")
  with WorkdirLock(workdir):
    with pytest.raises(WorkdirLockedError, match="heartbeat"):
      WorkdirLock(workdir).__enter__()
  assert not (tmp_path / "lock.json").exists()
  (tmp_path / "lock.json").write_text(json.dumps(
      {"host": "h", "pid": 1, "since": "x", "heartbeat": 0.0}))  # expired
  with WorkdirLock(workdir):
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """sgm_toy smoke, 6 steps, a checkpoint every 2: steps 2, 4, 6 on disk."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = smoke_config(**{"training.num_train_steps": 6, "checkpoint.every_steps": 2,
                           "checkpoint.keep": 5})
  train.train(config, workdir, devices=one_device())
  return workdir, config


def _steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _restored_step(workdir, config):
  exp = train.Experiment(config, workdir, devices=one_device())
  _, step, _ = exp.restore_for_inference()
  return step


def test_damaged_checkpoints_are_moved_aside_and_the_next_older_is_used(
    trained_workdir, tmp_path, caplog):
  source, config = trained_workdir
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert _steps(ckpts) == [2, 4, 6]
  caplog.set_level(logging.WARNING)

  # 1. A stray empty step folder newer than everything.
  os.makedirs(os.path.join(ckpts, "8"))
  # 2. The newest real one loses its meta item.
  shutil.rmtree(os.path.join(ckpts, "6", "meta"))
  # 3. The next one has every array file truncated.
  for path in glob.glob(os.path.join(ckpts, "4", "state", "**", "*"), recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 64 and "METADATA" not in path:
      with open(path, "r+b") as f:
        f.truncate(16)
  assert _restored_step(workdir, config) == 2
  assert sorted(os.listdir(ckpts)) == ["2", "4.damaged", "6.damaged", "8.damaged"]
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 3 and all("\n" not in w for w in warnings)

  # Training resumes from step 2 and runs to the end; nothing moved aside is deleted.
  state = train.train(config, workdir, devices=one_device())
  assert int(state.step) == 6
  assert {"4.damaged", "6.damaged", "8.damaged"} <= set(os.listdir(ckpts))


def test_no_readable_checkpoint_is_one_line(trained_workdir, tmp_path):
  source, config = trained_workdir
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for step in _steps(ckpts):
    shutil.rmtree(os.path.join(ckpts, str(step), "state"))
  with pytest.raises(checkpoint.NoReadableCheckpointError) as info:
    _restored_step(workdir, config)
  assert "\n" not in str(info.value) and "tried 6" in str(info.value)


def test_retention_keeps_regular_checkpoints_through_repeated_preemptions():
  config = smoke_config(**{"checkpoint.every_steps": 20, "checkpoint.keep": 3,
                           "checkpoint.permanent_every_steps": 1000})
  ck = checkpoint.Checkpointer.__new__(checkpoint.Checkpointer)
  ck.every_steps, ck.permanent_every, ck.keep = 20, 1000, 3
  del config
  # Three preemptions (1230, 1251, 1255) between regular saves every 20 steps.
  steps = [1000, 1180, 1200, 1220, 1230, 1240, 1251, 1255]
  assert ck.retained(steps) == {1000, 1200, 1220, 1240, 1255}
  assert ck.retained([1000, 1200, 1220, 1240, 1255, 1260]) == {1000, 1220, 1240, 1260}


def test_an_existing_step_is_never_overwritten(tmp_path):
  config = smoke_config()
  exp = train.Experiment(config, str(tmp_path), devices=one_device())
  state = exp.init_fn(exp.rng)
  first = checkpoint.Checkpointer(str(tmp_path), config.checkpoint)
  first.save(5, state, {"data_position": 5, "fingerprint": exp.fingerprint})
  first.close()
  other = jax.tree.map(lambda x: x + 1, state)
  second = checkpoint.Checkpointer(str(tmp_path), config.checkpoint)  # another trainer
  second.save(5, other, {"data_position": 5, "fingerprint": exp.fingerprint})
  second.close()
  restored, step, _ = exp.restore_for_inference()
  assert step == 5
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_during_start_up_exits_zero_with_nothing_written(tmp_path):
  import signal
  import subprocess
  import time
  from tests.helpers import REPO, main_command, subprocess_env
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(main_command("configs/sgm_toy.py:smoke", workdir), cwd=REPO,
                          env=subprocess_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  time.sleep(1.5)  # inside the imports / start-up, long before the first step
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=180)
  assert proc.returncode == 0, out  # was 143 (killed)
  assert "nothing new to save" in out
  assert not os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.listdir(
      os.path.join(workdir, "checkpoints"))


def test_ctrl_c_requests_a_save_and_a_second_one_aborts():
  import signal
  preemption = train.Preemption()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested and preemption.reached(1)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    preemption.restore_handler()


def test_resume_with_another_batch_size_is_refused_unless_allowed(trained_workdir, tmp_path):
  source, config = trained_workdir
  workdir = str(tmp_path / "w")
  shutil.copytree(source, workdir)
  other = smoke_config(**{"training.num_train_steps": 8, "training.batch_size":
                          config.training.batch_size // 2, "checkpoint.every_steps": 2,
                          "checkpoint.keep": 5})
  with pytest.raises(ValueError, match="allow_batch_size_change") as info:
    train.train(other, workdir, devices=one_device())
  assert "\n" not in str(info.value)
  other.training.allow_batch_size_change = True
  state = train.train(other, workdir, devices=one_device())
  assert int(state.step) == 8
  exp = train.Experiment(other, workdir, devices=one_device())
  _, step, meta = exp.restore_for_inference()
  # 6 steps at batch B = 12 steps at B/2, then 2 more: position 14, at step 8.
  assert step == 8 and meta["data_position"] == 14 and meta["batch_size"] == other.training.batch_size


def test_workdir_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys):
  from lsgm_jax import main
  afile = tmp_path / "afile"
  afile.write_text("x")
  for workdir, what in ((str(afile), "is a file"), (str(afile / "sub"), "is under a file")):
    with pytest.raises(SystemExit) as info:
      main.check_workdir(workdir, main.Mode.TRAIN)
    assert info.value.code == main.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and what in err and workdir in err


def test_storage_fault_is_one_line_with_its_own_exit_code(tmp_path):
  from lsgm_jax import main
  from tests.helpers import run_main
  target = "/sys/lsgm_jax_storage_test"  # sysfs refuses mkdir, even to root
  try:
    os.mkdir(target)
    os.rmdir(target)
    pytest.skip("this machine lets us create folders in /sys")
  except OSError:
    pass
  proc = run_main("configs/sgm_toy.py:smoke", target)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("lsgm_jax: error:")]
  assert proc.returncode == main.EXIT_STORAGE, proc.stderr[-2000:]
  assert len(lines) == 1 and "storage:" in lines[0] and "Traceback" not in proc.stderr


def test_sample_and_eval_write_to_output_dir_not_the_workdir(trained_workdir, tmp_path):
  source, config = trained_workdir
  before = sorted(os.path.relpath(os.path.join(d, f), source)
                  for d, _, fs in os.walk(source) for f in fs)
  config = config.copy_and_resolve_references()
  config.sampling.num_samples = config.sampling.batch_size = 64
  info = train.sample(config, source, devices=one_device(), output_dir=str(tmp_path / "out"))
  assert info["nfe"] > 0
  assert os.path.isfile(tmp_path / "out" / "samples" / "step_6" / "samples.npz")
  after = sorted(os.path.relpath(os.path.join(d, f), source)
                 for d, _, fs in os.walk(source) for f in fs)
  assert after == before


def test_disk_full_during_an_async_save_is_one_storage_error(tmp_path):
  import subprocess
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    config = smoke_config(**{"checkpoint.async_save": True})
    exp = train.Experiment(config, str(mount), devices=one_device())
    state = exp.init_fn(exp.rng)
    ck = checkpoint.Checkpointer(str(mount), config.checkpoint)
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
      for step in range(1, 50):  # the failure surfaces at a later save or at close
        ck.save(step, state, {"data_position": step, "fingerprint": exp.fingerprint})
      ck.close()
    assert isinstance(info.value, OSError)  # main: exit code 3 (storage)
    assert "disk full" in str(info.value) and "\n" not in str(info.value)
  finally:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _without_constants(tree):
  if isinstance(tree, dict):
    return {k: _without_constants(v) for k, v in tree.items() if k != "constants"}
  return tree


def test_checkpoint_from_before_the_constants_collection_restores(tmp_path, caplog):
  """Fourier-embedding models keep their frequencies in model_state["constants"] (so an
  import can set them); checkpoints written before lack them and must still resume,
  with the init's values (the constants the older code used). Another layout difference
  is a mismatch error, and the checkpoint is not moved aside as damaged."""
  from tests.helpers import load_config
  config = load_config("cld_digits", "smoke")
  exp = train.Experiment(config, str(tmp_path / "old"), devices=one_device())
  state = jax.device_get(exp.init_fn(exp.rng))
  assert any("constants" in jax.tree_util.keystr(p)
             for p, _ in jax.tree_util.tree_flatten_with_path(state.model_state)[0])
  state = state.replace(params=jax.tree.map(lambda x: x + 0.5, state.params))
  meta = {"data_position": 3, "fingerprint": exp.fingerprint}
  old = checkpoint.Checkpointer(str(tmp_path / "old"), config.checkpoint)
  old.save(3, state.replace(model_state=_without_constants(state.model_state)), meta)
  old.close()
  with caplog.at_level(logging.WARNING):
    restored, step, _ = exp.restore_for_inference()
  assert step == 3 and "predates model_state/" in caplog.text
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)

  extra = dict(state.model_state, stray={"x": np.zeros(2, np.float32)})
  other = checkpoint.Checkpointer(str(tmp_path / "other"), config.checkpoint)
  other.save(3, state.replace(model_state=extra), meta)
  other.close()
  exp_other = train.Experiment(config, str(tmp_path / "other"), devices=one_device())
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"unexpected model_state/stray/x"):
    exp_other.restore_for_inference()
  assert os.path.isdir(tmp_path / "other" / "checkpoints" / "3")


def test_write_error_names_the_fault_for_os_errors_and_tensorstore_codes():
  """Orbax's metadata writes raise Python's OSError (errno), tensorstore's raise status
  codes; both name the fault on one line."""
  import errno
  cases = [(OSError(errno.ENOSPC, "No space left on device"), "disk full"),
           (ValueError("RESOURCE_EXHAUSTED: write failed"), "disk full"),
           (OSError(errno.EROFS, "Read-only file system"), "permission denied"),
           (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
           (OSError(errno.EIO, "Input/output error"), "write failed")]
  for error, what in cases:
    line = str(checkpoint._write_error(error, "/w/checkpoints"))
    assert f"/w/checkpoints: {what} (" in line and "\n" not in line, line
