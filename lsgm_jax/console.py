"""What a run prints: a start banner, one progress line per ``training.log_every``,
warnings that matter, and no library chatter (issue 15 item 6).

Libraries (Orbax, jax, clu, TensorFlow) log through Python's ``logging`` into absl's
handler; ``quiet_libraries`` drops their records below ERROR unless ``--verbosity`` is
1 or more. This project's own INFO lines and every WARNING of its own stay. The full
configuration goes to ``<workdir>/config.json`` and TensorBoard; the console shows only
the fields that differ from the defaults.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import time
from typing import Any

from absl import logging

_OWN = (os.sep + "lsgm_jax" + os.sep, os.sep + "benchmarks" + os.sep)


class _LibraryFilter(std_logging.Filter):
  """Passes this project's records, and other modules' records at ERROR or above."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    path = record.pathname or ""
    if logging.get_verbosity() >= 1 or any(part in path for part in _OWN):
      return True
    # Orbax logs its background threads' failures as ERROR tracebacks and then raises
    # the same error in the main thread, where it becomes one line: drop its copies.
    return record.levelno >= std_logging.ERROR and "orbax" not in path


_FILTER = _LibraryFilter()


class _ShortFormatter(std_logging.Formatter):
  """``HH:MM:SS message``; warnings and errors say so."""

  def format(self, record: std_logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno < std_logging.WARNING else f"{record.levelname}: "
    text = f"{stamp} {level}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def quiet_libraries() -> None:
  """Installs the library filter and the short line format on absl's handler
  (idempotent); ``--verbosity=1`` brings the libraries' lines back."""
  handler = logging.get_absl_handler()
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
  handler.setFormatter(_ShortFormatter())
  # TensorFlow's C++ start-up note ("oneDNN custom operations are on ..."); tf.data
  # here does no math that oneDNN would change.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def config_differences(config) -> dict[str, Any]:
  """The fields of ``config`` whose values differ from ``config_defaults``'s defaults."""
  from lsgm_jax import config_defaults  # pylint: disable=g-import-not-at-top
  defaults = flatten(config_defaults.get_default_config().to_dict())
  current = flatten(config.to_dict())
  return {k: v for k, v in current.items()
          if k not in defaults or _normal(defaults[k]) != _normal(v)}


def _normal(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def write_config_json(config, workdir: str) -> str:
  """``<workdir>/config.json``: every field, as this run used it."""
  path = os.path.join(workdir, "config.json")
  if "://" in workdir:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(path).write_text(config.to_json_best_effort(indent=2))
  else:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return path


def banner(mode: str, config, *, num_params: int, mesh, workdir: str,
           resumed_from: int | None, data_description: str) -> list[str]:
  """The start lines of a run."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  shape = " x ".join(f"{n} {a}" for a, n in mesh.shape.items())
  stage = ""
  for family in ("lsgm", "latent_vae", "score_vae"):
    if family in config and "stage" in config[family] and config.method == family:
      stage = f" (stage {config[family].stage})"
  lines = [
      f"lsgm_jax {mode}: method {config.method}{stage}, {num_params:,} parameters",
      f"  devices: {jax.device_count()} x {kind} in {jax.process_count()} process(es); "
      f"mesh {shape}",
      f"  data: {data_description}",
      f"  workdir: {workdir} ({'resumed from step ' + str(resumed_from) if resumed_from is not None else 'fresh start'})",
  ]
  diff = config_differences(config)
  if diff:
    shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(diff.items()))
    lines.append(f"  config (fields that differ from the defaults): {shown}")
  return lines


def _short(value: Any) -> str:
  text = json.dumps(_normal(value)) if not isinstance(value, str) else value
  return text if len(text) <= 60 else text[:57] + "..."


def human_flops(value: float) -> str:
  """1.43e13 -> '14.3 TFLOP' (the caller appends '/s' for rates)."""
  for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
    if value >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g} FLOP"


def hms(seconds: float) -> str:
  seconds = max(int(round(seconds)), 0)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Steps/s over the last window and an ETA from it, for one progress line."""

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self.window_step = start_step
    self.window_time = time.perf_counter()

  def line(self, step: int, metrics: dict[str, float], *, flops_per_step: float | None,
           num_devices: int, peak_tflops: float | None) -> tuple[str, dict[str, float]]:
    """(the console line, rate scalars for TensorBoard) at ``step``."""
    now = time.perf_counter()
    rate = (step - self.window_step) / max(now - self.window_time, 1e-9)
    self.window_step, self.window_time = step, now
    scalars = {"steps_per_s": rate}
    parts = [f"step {step}/{self.total}"]
    terms = sorted(k for k in metrics if k.startswith("loss/"))
    if len(terms) == 1 and metrics.get("loss") == metrics[terms[0]]:
      terms = []  # the one term is the loss: say it once
    parts += [f"{k} {metrics[k]:.4g}" for k in ["loss"] + terms if k in metrics]
    if "grad_norm" in metrics:
      parts.append(f"grad_norm {metrics['grad_norm']:.3g}")
    if metrics.get("num_skipped"):
      parts.append(f"skipped {int(metrics['num_skipped'])}")
    parts.append(f"{rate:.3g} steps/s")
    if flops_per_step:
      tflops = flops_per_step * rate / num_devices / 1e12
      scalars["tflops_per_device"] = tflops
      text = f"{human_flops(tflops * 1e12)}/s/device"
      if peak_tflops:
        scalars["mfu"] = tflops / peak_tflops
        text += f" (MFU {100 * tflops / peak_tflops:.1f}%)"
      parts.append(text)
    remaining = (self.total - step) / rate if rate > 0 else 0.0
    parts.append(f"ETA {hms(remaining)}")
    return " | ".join(parts), scalars
