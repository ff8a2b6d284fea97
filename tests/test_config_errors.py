"""Command-line config errors name the exact flag or file, in one line (issue 15 item 3).

``main.parse_flags`` prints ``config_errors.check_file`` / ``diagnose``; the wiring
(exit code 2, no traceback) is covered by tests/test_main.py."""

from __future__ import annotations

import pytest

from lsgm_jax import config_errors

TOY = "--config=configs/sgm_toy.py:smoke"


@pytest.mark.parametrize("args, expected", [
    # The first override is fine; the second is the culprit (was blamed on --config.seed=1).
    (["--config.seed=1", "--config.training.batch_size=abc"],
     "invalid value in --config.training.batch_size=abc: 'abc' is not an int"),
    (["--config.training.batch_size=2.5"],
     "invalid value in --config.training.batch_size=2.5: '2.5' is not an int"),
    (["--config.training.batch_size="],
     "invalid value in --config.training.batch_size=: an empty value; the field is int"),
    (["--config.training.batchsize=3"],
     "unknown config field 'config.training.batchsize' in --config.training.batchsize=3 "
     "(config.training has no 'batchsize'); did you mean 'config.training.batch_size'?"),
    (["--config.trainin.batch_size=3"],
     "unknown config field 'config.trainin.batch_size' in --config.trainin.batch_size=3 "
     "(config has no 'trainin'); did you mean 'config.training'?"),
    (["--config.optim.lr=fast"], "invalid value in --config.optim.lr=fast: 'fast' is not a float"),
    (["--config.data.centered=maybe"],
     "invalid value in --config.data.centered=maybe: 'maybe' is not a bool (true / false)"),
    (["--config.training=3"],
     "invalid value in --config.training=3: config.training is a section, not a value; "
     "set one of its fields"),
])
def test_bad_override_names_that_override(args, expected):
  assert config_errors.check_file([TOY] + args) is None
  assert config_errors.diagnose(["prog", TOY] + args) == expected


def test_good_overrides_are_not_blamed():
  assert config_errors.diagnose(
      ["prog", TOY, "--config.seed=1", "--config.training.batch_size=8",
       "--config.optim.lr=1e-3", "--config.data.centered=false",
       "--config.sampling.method=sscs"]) is None


def test_config_file_errors_are_one_line(tmp_path):
  assert config_errors.check_file(["--config=configs/nope.py"]) == (
      "config file 'configs/nope.py' not found (--config=configs/nope.py)")
  assert config_errors.check_file(["--config="]).startswith("--config= names no file")
  line = config_errors.check_file(["--config=configs/cld_cifar.py:nope"])
  assert line.startswith("config file 'configs/cld_cifar.py' line ") and "'nope'" in line
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  raise ValueError('boom\\nsecond line')\n")
  line = config_errors.check_file([f"--config={bad}"])
  assert line == f"config file {str(bad)!r} line 2 failed to load (--config={bad}): boom second line"
  assert "\n" not in line
