"""Published LDM first-stage checkpoints -> flax params of ``models.autoencoder``.

The latent VAE paper starts from the pretrained LDM autoencoders (§4: "an off-the-shelf
autoencoder from Rombach et al. (2022)"). Their files are PyTorch Lightning checkpoints
(``model.ckpt``: a dict whose ``state_dict`` holds ``encoder.*``, ``decoder.*``,
``quant_conv.*``, ``post_quant_conv.*`` and the training loss's ``loss.*``); a whole LDM
prefixes the autoencoder's keys with ``first_stage_model.``. ``.safetensors`` files with
the same keys work too.

Neither format needs torch here: a torch zip checkpoint is ``<name>/data.pkl`` (a
pickle) plus one raw little-endian file ``<name>/data/<key>`` per storage. The pickle is
read by a restricted unpickler that knows only tensor rebuilding, storages and plain
containers; every other class becomes an inert placeholder, so no code from the file
runs. Legacy (pre-1.6, non-zip) torch files are read too (``read_torch_legacy``: the
format of older published weights such as pytorch-fid's Inception file).

Mapping: ``a.down.1.block.0.norm1.weight`` -> ``a/down_1/block_0/norm1/scale``
(``name.N`` pairs join as ``name_N``); conv weights OIHW -> HWIO ``kernel``; GroupNorm
``weight`` -> ``scale``; biases stay. ``loss.*`` (LPIPS, discriminator, logvar of the
LDM training loss) is not part of the autoencoder and is skipped.
"""

from __future__ import annotations

import collections
import json
import pickle
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lsgm_jax.models.autoencoder import AutoencoderConfig, AutoencoderKL

FIRST_STAGE_PREFIX = "first_stage_model."
SKIPPED_PREFIXES = ("loss.",)

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointFormatError(ValueError):
  """The file is not a checkpoint this converter can read, or does not fit the model."""


class _Opaque:
  """Stands in for any class the restricted unpickler does not know (never called).

  Its pickled state is kept as plain data (``pickled_state``), so that e.g. the argparse
  Namespace a training script stored (LSGM's ``args``) can be read; nothing runs.
  """

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.pickled_state = state


class _LazyStorage:
  """A legacy-format storage: its bytes follow the pickle, so they are read later."""

  def __init__(self, key: str, dtype, numel: int):
    self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
    self.data: np.ndarray | None = None


class _PendingTensor:
  """A tensor over a ``_LazyStorage``, built once the storage's bytes are read."""

  def __init__(self, storage: _LazyStorage, offset, size, stride):
    self.storage, self.args = storage, (offset, size, stride)

  def resolve(self) -> np.ndarray:
    return _rebuild_tensor(self.storage.data, *self.args)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """``torch._utils._rebuild_tensor_v2``: a strided view of a flat storage, copied."""
  del unused
  if isinstance(storage, _LazyStorage):
    return _PendingTensor(storage, offset, size, stride)
  if not size:
    return np.array(storage[offset])
  itemsize = storage.dtype.itemsize
  if 0 in size:
    return np.zeros(tuple(size), storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or min(stride) < 0 or last >= storage.shape[0]:  # never read past it
    raise CheckpointFormatError(
        f"tensor of shape {tuple(size)} reaches past its storage of {storage.shape[0]}")
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  """``torch._utils._rebuild_parameter``: a Parameter is its data here."""
  del unused
  return data


class _TorchUnpickler(pickle.Unpickler):

  def __init__(self, file, read_storage):
    super().__init__(file)
    self._read_storage = read_storage

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return name  # a storage type is only ever used as a tag in persistent ids
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch" and name == "Size":
      return tuple
    return _Opaque

  def persistent_load(self, pid):
    # zip: ("storage", type, key, location, numel); legacy: the same plus view metadata.
    kind = pid[0].decode() if pid and isinstance(pid[0], bytes) else (pid[0] if pid else "")
    if not (isinstance(pid, tuple) and kind == "storage" and len(pid) in (5, 6)):
      raise CheckpointFormatError(f"unsupported persistent id in torch checkpoint: {pid!r}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if len(pid) == 6 and pid[5] is not None:
      raise CheckpointFormatError("legacy torch storage views are not supported")
    dtype = _STORAGE_DTYPES.get(storage_type) if isinstance(storage_type, str) else None
    if dtype is None:
      raise CheckpointFormatError(f"unsupported torch storage type {storage_type!r}")
    key = key.decode() if isinstance(key, bytes) else str(key)
    return self._read_storage(key, dtype, int(numel))


def _member_array(path: str, archive: zipfile.ZipFile, name: str, dtype) -> np.ndarray:
  """The raw little-endian array of zip member ``name``, memory-mapped when stored
  uncompressed (``torch.save`` always stores): nothing is read until a tensor copies
  its slice, so a multi-GiB checkpoint is never held twice."""
  dtype = np.dtype(dtype).newbyteorder("<")
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise CheckpointFormatError(f"{path}: storage {name} is missing") from None
  if info.compress_type != zipfile.ZIP_STORED or info.file_size % dtype.itemsize:
    return np.frombuffer(archive.read(name), dtype=dtype)
  with open(path, "rb") as f:  # the local header: 30 bytes, then its own name + extra
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
      raise CheckpointFormatError(f"{path}: damaged zip entry {name}")
    start = (info.header_offset + 30 + int.from_bytes(header[26:28], "little")
             + int.from_bytes(header[28:30], "little"))
    f.seek(0, 2)
    if start + info.file_size > f.tell():
      raise CheckpointFormatError(f"{path}: truncated (storage {name})")
  if info.file_size == 0:
    return np.zeros((0,), dtype)
  return np.memmap(path, dtype=dtype, mode="r", offset=start,
                   shape=(info.file_size // dtype.itemsize,))


def read_torch_zip(path: str) -> Any:
  """The object that ``torch.save`` wrote to ``path`` (zip format), tensors as numpy.

  Storages are memory-mapped (``_member_array``) and every tensor is one copy of its
  slice, so peak memory is about the size of the tensors, not twice the file."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise CheckpointFormatError(f"{path}: not a torch zip checkpoint (no single data.pkl)")
    root = pickles[0][:-len("data.pkl")]
    cache: dict[str, np.ndarray] = {}

    def read_storage(key: str, dtype, numel: int) -> np.ndarray:
      del numel
      if key not in cache:
        cache[key] = _member_array(path, archive, f"{root}data/{key}", dtype)
      return cache[key]

    with archive.open(pickles[0]) as f:
      return _TorchUnpickler(f, read_storage).load()


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


def read_torch_legacy(path: str) -> Any:
  """The object of a legacy (non-zip, torch < 1.6 default) ``torch.save`` file.

  Layout: four pickles (magic number, protocol version, system info, the object with
  storages as persistent ids), a fifth listing the storage keys in order, then per key
  an int64 element count and the storage's raw little-endian bytes.
  """
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # noqa: BLE001  (any unpickling failure: not this format)
      raise CheckpointFormatError(f"{path}: not a legacy torch file ({e})") from None
    if magic != LEGACY_MAGIC:
      raise CheckpointFormatError(f"{path}: not a legacy torch file (no magic number)")
    if pickle.load(f) != LEGACY_PROTOCOL:
      raise CheckpointFormatError(f"{path}: unsupported legacy torch protocol version")
    sys_info = pickle.load(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise CheckpointFormatError(f"{path}: big-endian torch files are not supported")
    storages: dict[str, _LazyStorage] = {}

    def lazy_storage(key: str, dtype, numel: int) -> _LazyStorage:
      return storages.setdefault(key, _LazyStorage(key, dtype, numel))

    obj = _TorchUnpickler(f, lazy_storage).load()
    for key in pickle.load(f):
      storage = storages[key.decode() if isinstance(key, bytes) else str(key)]
      numel = int(np.frombuffer(f.read(8), "<i8")[0])
      raw = f.read(numel * storage.dtype.itemsize)
      if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
        raise CheckpointFormatError(f"{path}: truncated storage {key}")
      storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))

  def resolve(node):
    if isinstance(node, _PendingTensor):
      return node.resolve()
    if isinstance(node, dict):
      return type(node)((k, resolve(v)) for k, v in node.items())
    if isinstance(node, (list, tuple)):
      return type(node)(resolve(v) for v in node)
    return node

  return resolve(obj)


def read_torch_file(path: str) -> Any:
  """``torch.load`` without torch: zip format or legacy format, tensors as numpy."""
  if zipfile.is_zipfile(path):
    return read_torch_zip(path)
  try:
    return read_torch_legacy(path)
  except CheckpointFormatError:
    raise CheckpointFormatError(
        f"{path}: not a zip-format or legacy torch file, nor .safetensors") from None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Tensors of a ``.safetensors`` file: an 8-byte little-endian header length, a JSON
  header ``{name: {dtype, shape, data_offsets}}``, then the raw bytes."""
  with open(path, "rb") as f:
    length = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(length))
    data = f.read()
  tensors = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise CheckpointFormatError(f"{path}: tensor {name!r} has unsupported dtype "
                                  f"{entry['dtype']}")
    start, end = entry["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
    tensors[name] = np.frombuffer(data[start:end], dtype).reshape(entry["shape"]).copy()
  return tensors


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The flat ``{key: array}`` state dict of an LDM checkpoint (torch zip or safetensors).

  Raises:
    FileNotFoundError: no file at ``path``.
    CheckpointFormatError: an unreadable file or one without a state dict.
  """
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  obj = read_torch_file(path)
  state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
  if not isinstance(state, dict):
    raise CheckpointFormatError(f"{path}: holds no state_dict")
  return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


def torch_key_to_path(key: str) -> tuple[str, ...]:
  """``encoder.down.1.block.0.norm1.weight`` -> ``('encoder', 'down_1', 'block_0',
  'norm1', 'weight')`` (the leaf is renamed later, once the array's rank is known)."""
  parts = key.split(".")
  out: list[str] = []
  for part in parts:
    if part.isdigit() and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return tuple(out)


def _flax_leaf(path: tuple[str, ...], value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  *module, leaf = path
  if leaf == "bias":
    return tuple(module) + ("bias",), value
  if leaf == "weight" and value.ndim == 4:  # conv: torch OIHW -> flax HWIO
    return tuple(module) + ("kernel",), np.transpose(value, (2, 3, 1, 0))
  if leaf == "weight" and value.ndim == 1:  # GroupNorm
    return tuple(module) + ("scale",), value
  raise CheckpointFormatError(f"unexpected tensor {'.'.join(path)} of shape {value.shape}")


def abstract_params(config: AutoencoderConfig, image_size: int | None = None) -> dict:
  """Shapes of the flax params (``jax.eval_shape``, nothing allocated)."""
  size = image_size or config.resolution
  module = AutoencoderKL(config)
  x = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]


def state_dict_to_params(state_dict: dict[str, np.ndarray], config: AutoencoderConfig
                         ) -> dict:
  """Flax params of ``AutoencoderKL(config)`` from an LDM state dict.

  Keys prefixed ``first_stage_model.`` are used alone when present (a whole LDM);
  ``loss.*`` is skipped. Every flax parameter must be found with its shape, and every
  remaining key must map to one.

  Raises:
    CheckpointFormatError: missing, unexpected or mis-shaped keys (named in the message).
  """
  if any(k.startswith(FIRST_STAGE_PREFIX) for k in state_dict):
    state_dict = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in state_dict.items()
                  if k.startswith(FIRST_STAGE_PREFIX)}
  expected = {tuple(str(p.key) for p in path): leaf for path, leaf in
              jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]}
  found: dict[tuple[str, ...], np.ndarray] = {}
  unexpected = []
  for key, value in state_dict.items():
    if key.startswith(SKIPPED_PREFIXES):
      continue
    path, array = _flax_leaf(torch_key_to_path(key), np.asarray(value))
    if path not in expected:
      unexpected.append(key)
      continue
    if array.shape != tuple(expected[path].shape):
      raise CheckpointFormatError(
          f"checkpoint tensor {key} has shape {tuple(value.shape)}, the model expects "
          f"{'/'.join(path)} of shape {tuple(expected[path].shape)}; check "
          "config.autoencoder's architecture against the checkpoint's config.yaml")
    found[path] = array.astype(np.float32)
  missing = sorted("/".join(p) for p in set(expected) - set(found))
  if unexpected or missing:
    raise CheckpointFormatError(
        f"checkpoint does not match the autoencoder: {len(unexpected)} unexpected keys "
        f"{sorted(unexpected)[:3]}, {len(missing)} missing params {missing[:3]}")
  params: dict = {}
  for path, array in found.items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = array
  return params


def params_to_state_dict(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """The inverse of ``state_dict_to_params``: LDM keys and torch layouts (OIHW)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(p.key) for p in path]
    *module, leaf_name = names
    value = np.asarray(leaf)
    if leaf_name == "kernel":
      value, leaf_name = np.transpose(value, (3, 2, 0, 1)), "weight"
    elif leaf_name == "scale":
      leaf_name = "weight"
    parts = []
    for i, name in enumerate(module):
      # mid.block_1 / mid.attn_1 are names in LDM too; level lists are down.N / up.N.
      match = re.fullmatch(r"(down|up|block|attn)_(\d+)", name)
      split = match and (i == 0 or module[i - 1] != "mid")
      parts.extend(match.groups() if split else (name,))
    out[prefix + ".".join(parts + [leaf_name])] = value
  return out


def load_ldm_checkpoint(path: str, config: AutoencoderConfig) -> dict:
  """``read_state_dict`` then ``state_dict_to_params``: flax params from an LDM file."""
  return state_dict_to_params(read_state_dict(path), config)
