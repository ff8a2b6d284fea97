"""Small helpers shared by the platform tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA's cheap CPU compile settings for the whole suite (tests/conftest.py sets them for the
# pytest processes, subprocess_env for the processes the tests start): the suite is
# compile-bound, and LLVM's backend optimisation is about half of each compile.
CHEAP_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The same settings as ``compile(compiler_options=...)`` for tests that compile by hand.
CHEAP_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                          "xla_llvm_disable_expensive_passes": True}


def load_config(name: str, variant: str = ""):
  """``configs/<name>.py``'s ``get_config(variant)``, as main.py's flag would load it."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def smoke_config(**overrides):
  """``configs/sgm_toy.py:smoke`` with synchronous saves and ``section.field`` overrides."""
  config = load_config("sgm_toy", "smoke")
  config.checkpoint.async_save = False
  for key, value in overrides.items():
    section, field = key.split(".")
    setattr(config[section], field, value)
  return config


def subprocess_env(num_devices: int = 1) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices} {CHEAP_XLA_FLAGS}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def main_command(config: str, workdir: str, *extra: str) -> list[str]:
  return [sys.executable, "-m", "lsgm_jax.main", f"--config={config}",
          f"--workdir={workdir}", *extra]


def run_main(config: str, workdir: str, *extra: str, num_devices: int = 1,
             timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(config, workdir, *extra), cwd=REPO,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)
