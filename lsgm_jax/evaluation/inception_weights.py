"""Inception weights by path, never downloaded: torchvision-named state dicts -> the Flax
variables of ``inception.InceptionV3``.

Formats: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a ``torch.save`` file,
read without torch by the project's restricted unpickler, zip or legacy layout), or
``.npz`` / ``.safetensors`` holding the same torchvision names.

Mapping (torchvision ``Inception3`` -> Flax): ``X.conv.weight`` OIHW -> ``params/X/conv/
kernel`` HWIO; ``X.bn.weight`` / ``bias`` -> ``params/X/bn/scale`` / ``bias``;
``X.bn.running_mean`` / ``running_var`` -> ``batch_stats/X/bn/mean`` / ``var``;
``fc.weight`` [1008, 2048] -> ``params/fc/kernel`` [2048, 1008]. BatchNorm
``num_batches_tracked`` counters are ignored. A file without ``fc`` (features only) is
accepted: its logits are NaN, so Inception Score and logits are reported unavailable
instead of silently wrong.
"""

from __future__ import annotations

import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsgm_jax.evaluation.inception import INPUT_SIZE, InceptionV3
from lsgm_jax.models import autoencoder_convert as torch_files

WeightsError = torch_files.CheckpointFormatError
_FC_KEYS = ("fc.weight", "fc.bias")


@functools.lru_cache(maxsize=1)
def abstract_variables() -> dict:
  """Shapes of ``{"params", "batch_stats"}`` (``jax.eval_shape``: nothing allocated)."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), x)


def _flat(tree: dict) -> dict[tuple[str, ...], object]:
  return {tuple(str(p.key) for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def torch_name(path: tuple[str, ...]) -> str:
  """Flax variable path -> torchvision state-dict key."""
  collection, *module, leaf = path
  name = {("params", "kernel"): "weight", ("params", "scale"): "weight",
          ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
          ("batch_stats", "var"): "running_var"}[(collection, leaf)]
  return ".".join(module + [name])


def _to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value.T
  return value


def state_dict_to_variables(state_dict: dict[str, np.ndarray]) -> dict:
  """Flax ``{"params", "batch_stats"}`` of ``InceptionV3`` from a torchvision state dict.

  Raises:
    WeightsError: missing, unexpected or mis-shaped keys, all named in one line.
  """
  expected = _flat(abstract_variables())
  by_name = {torch_name(path): path for path in expected}
  has_fc = all(k in state_dict for k in _FC_KEYS)
  found: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, misshaped = [], []
  for key, value in state_dict.items():
    if key.endswith(".num_batches_tracked"):
      continue
    path = by_name.get(key)
    if path is None:
      unexpected.append(key)
      continue
    value = np.asarray(value)
    if path[-1] == "kernel":  # torch OIHW / [out, in] -> flax HWIO / [in, out]
      value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value.T
    if value.shape != tuple(expected[path].shape):
      misshaped.append(f"{key} {tuple(np.shape(state_dict[key]))}")
      continue
    found[path] = value.astype(np.float32)
  present = set(state_dict)
  missing = sorted(torch_name(p) for p in expected if torch_name(p) not in present
                   and not (not has_fc and torch_name(p) in _FC_KEYS))
  if missing or unexpected or misshaped:
    raise WeightsError(
        f"Inception weights do not fit the FID InceptionV3: {len(missing)} missing "
        f"{missing[:3]}, {len(unexpected)} unexpected {sorted(unexpected)[:3]}, "
        f"{len(misshaped)} mis-shaped {misshaped[:3]}")
  if not has_fc:  # features-only file: logits become NaN (see module docstring)
    for path in expected:
      if torch_name(path) in _FC_KEYS:
        found[path] = np.full(expected[path].shape, np.nan, np.float32)
  variables: dict = {}
  for path, array in found.items():
    node = variables
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = array
  return variables


def variables_to_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """The inverse mapping: torchvision names and layouts."""
  return {torch_name(path): _to_torch_layout(path, np.asarray(leaf))
          for path, leaf in _flat(variables).items()}


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """``{torchvision key: array}`` from a ``.pth``/``.pt``, ``.npz`` or ``.safetensors``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Inception weights not found: {path}")
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  if path.endswith(".safetensors"):
    return torch_files.read_safetensors(path)
  obj = torch_files.read_torch_file(path)
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise WeightsError(f"{path}: holds no state dict")
  return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def load(path: str) -> tuple[dict, str]:
  """(Flax variables, the file's sha256) of the Inception weights at ``path``."""
  return state_dict_to_variables(read_state_dict(path)), file_sha256(path)


def has_logits(variables: dict) -> bool:
  """False for a features-only file (no ``fc``): logits and IS are unavailable."""
  return bool(np.all(np.isfinite(np.asarray(variables["params"]["fc"]["bias"]))))
