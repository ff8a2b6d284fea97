"""One line naming the exact flag or file when a config fails to load from the command
line (``--config=FILE[:variant]`` and ``--config.a.b=value`` overrides).

absl / ml_collections report these failures with the wrong override (the first one whose
value happens to occur in the message), with escaped quotes and no path, or as a
36-line "Failed loading config file" traceback. ``diagnose`` re-checks the command line
itself: the file, then each override in order against the loaded config's fields and
their types, and names the first culprit.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re
import traceback
from typing import Any

_OVERRIDE = re.compile(r"^--config\.([\w.]+)=(.*)$", re.S)
_FILE = re.compile(r"^--config=(.*)$", re.S)


def _load(spec: str) -> tuple[Any, str | None]:
  """(config, None) or (None, one-line reason) for ``path[:variant]``."""
  path, _, variant = spec.partition(":")
  if not path:
    return None, "--config= names no file (use --config=configs/<name>.py[:variant])"
  if not os.path.isfile(path):
    return None, f"config file {path!r} not found (--config={spec})"
  try:
    module_spec = importlib.util.spec_from_file_location("lsgm_jax_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's file)
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    where = f"config file {path!r}" + (f" line {lines[-1]}" if lines else "")
    text = str(e).replace("\\n", " ")
    unknown = re.search(r'Key "([^"]+)" does not exist', text)
    if unknown:
      hint = re.search(r'Did you mean "([^"]+)"', text)
      text = (f"unknown config field {unknown.group(1)!r}"
              + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
    text = " ".join(text.split()) or type(e).__name__
    return None, f"{where} failed to load (--config={spec}): {text}"
  return config, None


def _parse_like(current: Any, text: str) -> tuple[bool, str]:
  """Whether ``text`` parses as a value of ``current``'s type; why not, if not."""
  kind = type(current).__name__
  if text == "":
    return False, f"an empty value; the field is {kind}"
  if isinstance(current, bool):
    ok = text.lower() in ("true", "false", "1", "0", "yes", "no")
    return ok, f"{text!r} is not a bool (true / false)"
  if isinstance(current, (int, float)):
    try:
      (int if isinstance(current, int) else float)(text)
      return True, ""
    except ValueError:
      if isinstance(current, int):
        try:
          float(text)
          return False, f"{text!r} is not an int"
        except ValueError:
          pass
      return False, f"{text!r} is not a{'n' if kind == 'int' else ''} {kind}"
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return False, f"{text!r} is not a {kind} literal such as (1, 2)"
    return isinstance(value, (tuple, list, int, float, str)), f"{text!r} is not a {kind}"
  if hasattr(current, "keys"):
    return False, "config.{} is a section, not a value; set one of its fields"
  return True, ""


def check_file(argv: list[str]) -> str | None:
  """One line if the ``--config`` file of ``argv`` is missing or fails to load (absl
  defers that error to the first use of the config, as a 36-line traceback)."""
  spec = next((m.group(1) for a in argv if (m := _FILE.match(a))), None)
  return None if spec is None else _load(spec)[1]


def diagnose(argv: list[str]) -> str | None:
  """One line naming the first bad ``--config`` file or override in ``argv``; None if
  none is found (the caller then reports the library's own message)."""
  spec = next((m.group(1) for a in argv if (m := _FILE.match(a))), None)
  if spec is None:
    return None
  config, reason = _load(spec)
  if reason:
    return reason
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    path, text = match.group(1), match.group(2)
    node: Any = config
    parts = path.split(".")
    for depth, name in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if name not in keys:
        where = "config." + ".".join(parts[:depth]) if depth else "config"
        close = difflib.get_close_matches(name, keys, n=1)
        hint = (f"; did you mean 'config.{'.'.join(parts[:depth] + [close[0]])}'?"
                if close else "")
        return f"unknown config field 'config.{path}' in {arg} ({where} has no {name!r}){hint}"
      node = node[name]
    ok, why = _parse_like(node, text)
    if not ok:
      return f"invalid value in {arg}: {why.replace('{}', path)}"
  return None
