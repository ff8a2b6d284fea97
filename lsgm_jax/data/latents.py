"""The ``latents`` dataset: a first stage's encodings of a dataset, for the second stage.

``--mode=encode`` (``lsgm_jax.encode_latents``) writes ``<dir>/train.npz`` and
``<dir>/eval.npz``, each an uncompressed npz with

* ``z``: float32 ``[N, h, w, C]`` normalised latents (first-stage posterior mean minus
  ``shift``, divided by ``scale``; latent VAE paper, appendix B);
* ``label``: int32 ``[N]`` (zeros for unconditional data);
* ``shift``, ``scale``: float32 ``[C]`` (equal entries when normalised globally);
* ``num_classes``: int scalar, the image dataset's classes.

``z`` is read through a memory map of the (stored, uncompressed) zip member, so an
ImageNet-sized split is never loaded whole. Batches follow the embedded datasets'
contract: global batch k of the train stream is a pure function of (seed, k), a fresh
permutation per epoch, the remainder dropped; process p takes rows [p L, (p + 1) L).
"""

from __future__ import annotations

import functools
import os
import struct
import zipfile
from typing import Iterator

import numpy as np

from lsgm_jax.data.config import DataConfig, DatasetInfo
from lsgm_jax.data.embedded import padded_batches
from lsgm_jax.data.preprocessing import Stream, numpy_rng

Batch = dict[str, np.ndarray]
SPLITS = ("train", "eval")
# The reference second stage (latent-vae-jax dataset_utils) clips normalised latents to
# [-4, 4]; that is the nominal range reported here. Stored values are not clipped.
NOMINAL_RANGE = (-4.0, 4.0)


def split_path(latents_dir: str, split: str) -> str:
  return os.path.join(latents_dir, f"{split}.npz")


def _missing(latents_dir: str, path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"config.data.latents_dir={latents_dir!r}: no {os.path.basename(path)} there; create "
      "it with `python -m lsgm_jax.main --mode=encode --config=<autoencoder config> "
      "--workdir=<autoencoder workdir>` (writes <workdir>/latents)")


def _memmap_member(path: str, member: str) -> np.ndarray:
  """A read-only memory map of array ``member`` of an uncompressed npz."""
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(member)
  if info.compress_type != zipfile.ZIP_STORED:
    raise ValueError(f"{path}: {member} is compressed; latents files must be stored")
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)  # zip local file header; name and extra field lengths at 26
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                   order="F" if fortran else "C")


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, np.ndarray]:
  del mtime  # part of the cache key: a re-encoded file is read again
  with np.load(path) as f:
    small = {k: np.asarray(f[k]) for k in f.files if k != "z"}
  small["z"] = _memmap_member(path, "z.npy")
  return small


def load_split(latents_dir: str, split: str) -> dict[str, np.ndarray]:
  """``{"z", "label", "shift", "scale", "num_classes"}`` of one split (z memory-mapped).

  Raises:
    FileNotFoundError: the file is missing (names the field and the encode command).
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  path = split_path(latents_dir, split)
  if not os.path.isfile(path):
    raise _missing(latents_dir, path)
  return _load(os.path.abspath(path), os.path.getmtime(path))


def dataset_info(cfg: DataConfig) -> DatasetInfo:
  """Shape, classes, sizes and the shift/scale of the stored latents."""
  train = load_split(cfg.latents_dir, "train")
  held_out = load_split(cfg.latents_dir, "eval")
  return DatasetInfo(
      "latents", tuple(int(s) for s in train["z"].shape[1:]), int(train["num_classes"]),
      False, int(train["z"].shape[0]), int(held_out["z"].shape[0]), NOMINAL_RANGE,
      num_levels=0, shift=tuple(float(v) for v in train["shift"]),
      scale=tuple(float(v) for v in train["scale"]))


def train_iterator(cfg: DataConfig, *, global_batch_size: int, seed: int,
                   start_position: int, local_batch_size: int,
                   process_index: int) -> Iterator[Batch]:
  """This process's rows of global batches ``start_position, start_position + 1, ...``.

  Returns:
    An infinite iterator of ``{"x": float32 [L, h, w, C], "label": int32 [L]}``.
  """
  split = load_split(cfg.latents_dir, "train")
  z, label = split["z"], split["label"]
  num = len(label)
  if global_batch_size > num:
    raise ValueError(f"global batch size {global_batch_size} exceeds the {num} training "
                     f"latents in {cfg.latents_dir}")
  steps_per_epoch = num // global_batch_size

  @functools.lru_cache(maxsize=2)
  def epoch_order(epoch: int) -> np.ndarray:
    return numpy_rng(Stream.LATENTS_EPOCH, seed, epoch).permutation(num)

  lo = process_index * local_batch_size

  def generate() -> Iterator[Batch]:
    step = start_position
    while True:
      epoch, within = divmod(step, steps_per_epoch)
      rows = epoch_order(epoch)[within * global_batch_size:(within + 1) * global_batch_size]
      rows = rows[lo:lo + local_batch_size]
      yield {"x": np.asarray(z[rows], np.float32), "label": label[rows].astype(np.int32)}
      step += 1

  return generate()


def eval_iterator(cfg: DataConfig, *, global_batch_size: int, local_batch_size: int,
                  process_index: int, split: str = "eval") -> Iterator[Batch]:
  """One padded pass over a stored split, ``{"x", "label", "mask"}``."""
  data = load_split(cfg.latents_dir, split)
  return padded_batches(data["z"], data["label"].astype(np.int32),
                        global_batch_size=global_batch_size,
                        local_batch_size=local_batch_size, process_index=process_index)


def write_split(latents_dir: str, split: str, z_chunks, num: int, latent_shape,
                label: np.ndarray, shift: np.ndarray, scale: np.ndarray,
                num_classes: int) -> str:
  """Writes one split's npz, streaming ``z`` from ``z_chunks`` (an iterable of float32
  ``[n, h, w, C]`` pieces, ``num`` rows in all) so it never has to fit in memory.

  Returns:
    The file's path (written to a temporary name, then renamed).
  """
  os.makedirs(latents_dir, exist_ok=True)
  path = split_path(latents_dir, split)
  tmp = path + ".tmp"
  shape = (int(num),) + tuple(int(s) for s in latent_shape)
  header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False, "shape": shape}
  written = 0
  with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
    with archive.open("z.npy", "w", force_zip64=True) as f:
      np.lib.format.write_array_header_2_0(f, header)
      for chunk in z_chunks:
        chunk = np.ascontiguousarray(chunk, np.float32)
        f.write(chunk.tobytes())
        written += len(chunk)
    for name, value in (("label", np.asarray(label, np.int32)),
                        ("shift", np.asarray(shift, np.float32)),
                        ("scale", np.asarray(scale, np.float32)),
                        ("num_classes", np.asarray(num_classes, np.int32))):
      with archive.open(f"{name}.npy", "w") as f:
        np.lib.format.write_array(f, value)
  if written != num:
    os.remove(tmp)
    raise ValueError(f"wrote {written} latents to {path}, expected {num}")
  os.replace(tmp, path)
  return path
