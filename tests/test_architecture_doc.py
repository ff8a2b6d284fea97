"""docs/ARCHITECTURE.md cannot rot: every name it gives for the code must exist.

* Every backticked dotted name that starts with ``lsgm_jax.`` must resolve: the longest
  importable module prefix is imported and the rest is looked up with ``getattr``
  (``module.function``, ``module.Class``, ``module.Class.method``).
* Every file path ``lsgm_jax/....py`` (and ``configs/``, ``tests/``, ``docs/`` paths)
  must exist, and every backticked directory ``lsgm_jax/.../`` too.
* Every row of the equation index names at least one such dotted path.

Imports only (no model is built, nothing is compiled). Two entry-point modules are
resolved from their source instead of being imported, because importing them is slow
or has side effects: ``lsgm_jax.train`` imports TensorFlow through clu (~20 s on a
loaded 2-core machine) and ``lsgm_jax.main`` installs signal handlers and defines absl
flags at import. Their names are looked up among the module's top-level definitions and
class bodies (``ast``), which is all the document uses them for.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")

STATIC_ONLY = {"lsgm_jax.train", "lsgm_jax.main"}

_BACKTICKED = re.compile(r"`([^`\n]+)`")
_DOTTED = re.compile(r"lsgm_jax(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_FILE = re.compile(r"(?<![\w/.<-])((?:lsgm_jax|configs|tests|docs)/[A-Za-z0-9_./-]*\.py)\b")
_DIR = re.compile(r"lsgm_jax(?:/[A-Za-z0-9_]+)*/")


def _doc() -> str:
  with open(DOC, encoding="utf-8") as f:
    return f.read()


def dotted_names(text: str) -> tuple[list[str], list[str]]:
  """(dotted names, malformed spans): backticked spans starting with ``lsgm_jax.``."""
  names, malformed = [], []
  for span in _BACKTICKED.findall(text):
    if not span.startswith("lsgm_jax."):
      continue
    call = _DOTTED.match(span)  # a call form `lsgm_jax.a.f(x, ...) -> y` names `a.f`
    if _DOTTED.fullmatch(span) or (call and span[call.end()] == "("):
      names.append(call.group(0))
    else:
      malformed.append(span)
  return names, malformed


def _module_file(module: str) -> str | None:
  base = os.path.join(ROOT, *module.split("."))
  for path in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.isfile(path):
      return path
  return None


@functools.lru_cache(maxsize=None)
def _static_scope(module: str) -> dict[str, dict[str, None] | None]:
  """Top-level names of ``module``'s source; a class maps to its body's names."""
  with open(_module_file(module), encoding="utf-8") as f:
    tree = ast.parse(f.read())

  def names_in(body) -> dict[str, None]:
    out: dict[str, None] = {}
    for node in body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        out[node.name] = None
      elif isinstance(node, ast.Assign):
        out.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
      elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        out[node.target.id] = None
      elif isinstance(node, (ast.Import, ast.ImportFrom)):
        out.update({(a.asname or a.name).split(".")[0]: None for a in node.names})
    return out

  scope: dict[str, dict[str, None] | None] = dict.fromkeys(names_in(tree.body))
  for node in tree.body:
    if isinstance(node, ast.ClassDef):
      scope[node.name] = names_in(node.body)
  return scope


def resolve(name: str) -> str | None:
  """None if ``name`` resolves, else why not (one line)."""
  parts = name.split(".")
  # The longest prefix that is a module of this checkout.
  for cut in range(len(parts), 0, -1):
    module = ".".join(parts[:cut])
    if _module_file(module):
      break
  else:
    return "no such module"
  rest = parts[cut:]
  if module in STATIC_ONLY:
    scope = _static_scope(module)
    if not rest:
      return None
    if rest[0] not in scope:
      return f"{module} defines no {rest[0]!r}"
    members = scope[rest[0]]
    if len(rest) == 1:
      return None
    if members is None or rest[1] not in members or len(rest) > 2:
      return f"{module}.{rest[0]} has no {'.'.join(rest[1:])!r}"
    return None
  try:
    obj = importlib.import_module(module)
  except Exception as e:  # noqa: BLE001  (any import failure is a finding)
    return f"import {module} failed: {type(e).__name__}: {e}"
  for i, attr in enumerate(rest):
    if not hasattr(obj, attr):
      return f"{'.'.join(parts[:cut + i])} has no attribute {attr!r}"
    obj = getattr(obj, attr)
  return None


def test_doc_uses_this_checkout():
  spec = importlib.util.find_spec("lsgm_jax")
  assert spec is not None and spec.origin is not None
  assert os.path.dirname(os.path.dirname(spec.origin)) == ROOT, (
      f"lsgm_jax is imported from {spec.origin}, not this checkout {ROOT}: run with "
      "PYTHONPATH set to the checkout")


def test_every_dotted_name_resolves():
  names, malformed = dotted_names(_doc())
  assert len(names) > 100, f"only {len(names)} dotted names found in {DOC}"
  assert not malformed, ("backticked spans that start with lsgm_jax. but are not a "
                         f"dotted name: {malformed}")
  failures = [f"{n}: {why}" for n in sorted(set(names)) if (why := resolve(n))]
  assert not failures, (f"{len(failures)} names in docs/ARCHITECTURE.md do not resolve:\n"
                        + "\n".join(failures))


def test_every_file_and_directory_exists():
  text = _doc()
  files = sorted(set(_FILE.findall(text)))
  assert len(files) > 20, f"only {len(files)} file paths found in {DOC}"
  missing = [p for p in files if not os.path.isfile(os.path.join(ROOT, p))]
  dirs = sorted({m.group(0) for span in _BACKTICKED.findall(text)
                 for m in [_DIR.fullmatch(span)] if m})
  missing += [d for d in dirs if not os.path.isdir(os.path.join(ROOT, d))]
  assert not missing, f"paths in docs/ARCHITECTURE.md that do not exist: {missing}"


def _index_rows(text: str) -> dict[str, list[str]]:
  """Table rows of each ``###`` subsection of the equation index, header rows excluded."""
  index = text.split("## 6. Equation index", 1)
  assert len(index) == 2, "docs/ARCHITECTURE.md has no '## 6. Equation index' section"
  body = re.split(r"^## ", index[1], flags=re.M)[0]
  rows: dict[str, list[str]] = {}
  paper = None
  for line in body.splitlines():
    if line.startswith("### "):
      paper = line[4:].strip()
      rows[paper] = []
    elif paper and line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
      if not line.startswith("| paper |"):
        rows[paper].append(line)
  return rows


def test_every_index_row_names_code():
  rows = _index_rows(_doc())
  for paper in ("tutorial", "CLD", "LSGM", "Latent VAE", "ScoreVAE"):
    assert any(paper in title and rows[title] for title in rows), (
        f"the equation index has no rows for {paper!r}: {sorted(rows)}")
  empty = [f"{title}: {row}" for title, lines in rows.items() for row in lines
           if not dotted_names(row.split("|")[-2] if row.count("|") >= 3 else row)[0]]
  assert not empty, "index rows whose code column names no lsgm_jax path:\n" + "\n".join(empty)
