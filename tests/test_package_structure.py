"""The package's shape (issue 16; docs/ARCHITECTURE.md section 1), read from the source.

* No module in ``lsgm_jax/`` is over 600 lines.
* The lower layers import only themselves (any import, at module level or inside a
  function): ``sde`` -> ``sde``; ``data`` -> ``data``; ``models`` -> ``models``;
  ``presets`` -> ``models`` and ``presets``.

Parses the files with ``ast`` (nothing is imported, well under a second).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "lsgm_jax")
MAX_LINES = 600

# layer directory -> the lsgm_jax subpackages its modules may import.
LOWER_LAYERS = {
    "sde": ("sde",),
    "data": ("data",),
    "models": ("models",),
    "presets": ("models", "presets"),
}


def _modules() -> list[str]:
  out = []
  for dirpath, _, files in os.walk(PACKAGE):
    out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
  return sorted(out)


def _lsgm_imports(path: str) -> set[str]:
  """Every ``lsgm_jax...`` module named by an import statement anywhere in the file."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names if a.name.startswith("lsgm_jax")}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if node.module == "lsgm_jax":  # from lsgm_jax import x -> lsgm_jax.x
        names |= {f"lsgm_jax.{a.name}" for a in node.names}
      elif node.module.startswith("lsgm_jax."):
        names.add(node.module)
  return names


def test_no_module_over_600_lines():
  long = {}
  for path in _modules():
    with open(path, encoding="utf-8") as f:
      n = sum(1 for _ in f)
    if n > MAX_LINES:
      long[os.path.relpath(path, ROOT)] = n
  assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


@pytest.mark.parametrize("layer", sorted(LOWER_LAYERS))
def test_lower_layer_imports_only_what_it_may(layer):
  allowed = LOWER_LAYERS[layer]
  bad = []
  for path in _modules():
    rel = os.path.relpath(path, PACKAGE)
    if rel.split(os.sep)[0] != layer:
      continue
    for name in sorted(_lsgm_imports(path)):
      sub = name.split(".")[1] if "." in name else ""
      if sub not in allowed:
        bad.append(f"lsgm_jax/{rel} imports {name}")
  assert not bad, f"{layer}/ may import only {allowed}: " + "; ".join(bad)
