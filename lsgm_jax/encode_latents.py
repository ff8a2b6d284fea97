"""``--mode=encode``: the latent VAE's first stage encodes a dataset once, and the
second stage reads the stored latents (``data.name="latents"``).

The latent of an image is the posterior mean of the autoencoder (the paper's first stage
is deterministic, §3.1). Normalisation follows appendix B: "We shift and scale the data
by constants so it has means and variances close to zero and one". With
``autoencoder.latent_norm="global"`` (the default) the constants are scalars, as in the
reference code (latent-vae-jax dataset_utils: one ``shift`` and one ``scale`` per
dataset): the mean and standard deviation of every latent value of the training split;
``"channel"`` takes them per latent channel. Both are stored as ``[C]`` arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from lsgm_jax import data, parallel
from lsgm_jax.data import latents as latents_data
# Loading a first stage for decoding lives below, in methods.first_stage (the latent
# families use it); decode_latents / load_first_stage stay importable from here.
from lsgm_jax.methods.first_stage import (  # noqa: F401
    _first_stage_params, _has_checkpoint, decode_latents, load_first_stage)

PyTree = Any


def latent_statistics(z: np.ndarray, how: str, chunk: int = 4096
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(shift, scale) ``[C]`` of latents ``[N, h, w, C]``: mean and standard deviation
  over everything (``global``, repeated per channel) or per channel (``channel``).
  Streams over ``chunk`` rows at a time in float64 (``z`` may be a memory map)."""
  if how not in ("global", "channel"):
    raise ValueError(f"config.autoencoder.latent_norm={how!r} is not 'global' or 'channel'")
  channels = z.shape[-1]
  total = np.zeros(channels)
  squares = np.zeros(channels)
  for i in range(0, len(z), chunk):
    flat = np.asarray(z[i:i + chunk], np.float64).reshape(-1, channels)
    total += flat.sum(axis=0)
    squares += np.square(flat).sum(axis=0)
  per_channel = z.size // channels
  if how == "global":
    mean = total.sum() / z.size
    var = squares.sum() / z.size - mean ** 2
    shift, scale = np.full(channels, mean), np.full(channels, np.sqrt(max(var, 0.0)))
  else:
    shift = total / per_channel
    scale = np.sqrt(np.maximum(squares / per_channel - shift ** 2, 0.0))
  return shift.astype(np.float32), np.maximum(scale, 1e-8).astype(np.float32)


def _global_rows(local: np.ndarray) -> np.ndarray:
  """This process's rows of a batch -> all processes' rows, in global batch order."""
  if jax.process_count() == 1:
    return np.asarray(local)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def encode(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict[str, Any]:
  """Encodes the train and eval splits of ``config.data`` with the workdir's autoencoder
  (or ``config.autoencoder.init_checkpoint`` when the workdir has no checkpoint) and
  writes ``<workdir>/latents/{train,eval}.npz`` (layout in ``lsgm_jax.data.latents``).

  Returns:
    A summary: paths, latent shape, shift, scale and examples per split.
  """
  if config.method != "autoencoder":
    raise ValueError(f"--mode=encode needs config.method='autoencoder', got "
                     f"{config.method!r}")
  info = data.dataset_info(config.data)
  if _has_checkpoint(workdir):
    source = workdir
  elif config.autoencoder.init_checkpoint:
    source = config.autoencoder.init_checkpoint
  else:
    raise FileNotFoundError(
        f"--mode=encode: no checkpoint in {os.path.join(workdir, 'checkpoints')} and "
        "config.autoencoder.init_checkpoint is empty; train first with --mode=train "
        f"--workdir={workdir} or set init_checkpoint to an LDM .ckpt")
  module, params = _first_stage_params(source, config, tuple(info.shape))
  mesh = parallel.make_mesh(config.parallel, devices)
  replicated = parallel.replicated(mesh)
  params = jax.device_put(params, replicated)
  encode_fn = jax.jit(
      lambda p, x: module.apply({"params": p}, x, method=module.encode)[0],
      in_shardings=(replicated, parallel.batch_sharding(mesh)), out_shardings=replicated)
  batch_size = int(config.eval.batch_size)
  out_dir = os.path.join(workdir, "latents")
  scratch = os.path.join(out_dir, ".raw")
  is_main = jax.process_index() == 0
  summary: dict[str, Any] = {"source": source, "latents_dir": out_dir}
  shift = scale = None
  t0 = time.time()
  for split in ("train", "eval"):
    # Raw posterior means go to a memory-mapped scratch file first: the statistics need
    # the whole training split before anything normalised can be written.
    num = info.num_train if split == "train" else info.num_eval
    latent_shape = module.config.latent_shape(info.shape)
    if is_main:
      os.makedirs(scratch, exist_ok=True)
    raw = np.lib.format.open_memmap(os.path.join(scratch, f"{split}.npy"), "w+", np.float32,
                                    (num,) + latent_shape) if is_main else None
    labels = np.zeros(num, np.int32)
    count = 0
    iterator = data.make_eval_iterator(
        config.data, global_batch_size=batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), split=split)
    for local in iterator:
      batch = parallel.global_batch(local, mesh)
      z = np.asarray(jax.device_get(encode_fn(params, batch["x"])))
      real, label = _global_rows(local["mask"]) > 0, _global_rows(local["label"])
      n = int(real.sum())
      if count + n > num:
        raise ValueError(f"{config.data.name} {split}: more than the {num} examples "
                         "its DatasetInfo announces")
      if is_main:
        raw[count:count + n] = z[real]
      labels[count:count + n] = label[real]
      count += n
    if count != num:
      raise ValueError(f"{config.data.name} {split}: encoded {count} examples, expected {num}")
    if is_main:
      raw.flush()
      if split == "train":
        shift, scale = latent_statistics(raw, config.autoencoder.latent_norm)
      chunk = max(1, batch_size)
      chunks = ((raw[i:i + chunk] - shift) / scale for i in range(0, num, chunk))
      path = latents_data.write_split(out_dir, split, chunks, num, latent_shape, labels,
                                      shift, scale, info.num_classes)
      summary[split] = {"path": path, "num": num}
      del raw
  if is_main:
    shutil.rmtree(scratch, ignore_errors=True)
    summary.update(latent_shape=list(module.config.latent_shape(info.shape)),
                   shift=[float(v) for v in shift], scale=[float(v) for v in scale],
                   seconds=time.time() - t0)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    logging.info("encoded %s to %s: %s", config.data.name, out_dir, summary)
  return summary
