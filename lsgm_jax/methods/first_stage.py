"""The first stage of a latent model, loaded for decoding: an autoencoder workdir (or an
LDM checkpoint file) plus the shift / scale its ``--mode=encode`` stored with the latents.

Used by the families that generate in an autoencoder's latent space (the latent VAE,
latent diffusion) to decode samples to images; ``lsgm_jax.encode_latents`` writes the
latents and re-exports these names.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from lsgm_jax import data
from lsgm_jax.data import latents as latents_data

PyTree = Any


def _saved_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config an autoencoder workdir was trained with (checkpoint metadata)."""
  from lsgm_jax import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    meta = checkpoint.load_stage(workdir, "autoencoder")["meta"]
  except FileNotFoundError:
    return None
  saved = meta.get("config")
  return ml_collections.ConfigDict(json.loads(saved)) if saved else None


def _first_stage_params(workdir_or_path: str, config: ml_collections.ConfigDict,
                        image_shape: tuple[int, ...]):
  from lsgm_jax.methods.autoencoder import (  # pylint: disable=g-import-not-at-top
      autoencoder_config, load_autoencoder_params)
  from lsgm_jax.models.autoencoder import AutoencoderKL  # pylint: disable=g-import-not-at-top
  ae_config = autoencoder_config(config, image_shape)
  return AutoencoderKL(ae_config), load_autoencoder_params(workdir_or_path, ae_config)


def _has_checkpoint(workdir: str) -> bool:
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


def load_first_stage(workdir_or_path: str, config: ml_collections.ConfigDict
                     ) -> tuple[Any, PyTree, np.ndarray, np.ndarray]:
  """The first stage for decoding latents: ``(module, params, shift, scale)``.

  Args:
    workdir_or_path: an autoencoder workdir (its latest checkpoint's EMA params; the
      architecture and image shape come from the config saved with it), or an LDM
      checkpoint file (converted with ``config.autoencoder``'s architecture, 3-channel
      images of ``config.autoencoder``'s preset resolution).
    config: the caller's config; its ``autoencoder`` section describes the architecture
      when the workdir has no saved config or a file is given; ``data.latents_dir``
      (when ``data.name="latents"``) says where shift and scale are, else
      ``<workdir>/latents``.

  Returns:
    ``module`` (``models.autoencoder.AutoencoderKL``), its ``params``, and float32
    ``shift``, ``scale`` of shape ``[C]``. Images from normalised latents z:
    ``module.apply({"params": params}, z * scale + shift, method=module.decode)``
    (``decode_latents`` does exactly this).

  Raises:
    FileNotFoundError: no checkpoint / file, or no stored latents (names the command).
  """
  if os.path.isfile(workdir_or_path):
    ae = config.autoencoder
    size = ae.preset and 256 or int(config.data.image_size) or 256
    module, params = _first_stage_params(workdir_or_path, config, (size, size, 3))
    latents_dir = config.data.latents_dir
  else:
    saved = _saved_config(workdir_or_path) or config
    shape = tuple(data.dataset_info(saved.data).shape)
    module, params = _first_stage_params(workdir_or_path, saved, shape)
    latents_dir = os.path.join(workdir_or_path, "latents")
    if config.data.name == "latents" and config.data.latents_dir:
      latents_dir = config.data.latents_dir
  if not latents_dir:
    raise FileNotFoundError(
        "load_first_stage: set config.data.latents_dir to the folder --mode=encode wrote "
        "(for the shift and scale of the latents)")
  train = latents_data.load_split(latents_dir, "train")
  return (module, params, np.asarray(train["shift"], np.float32),
          np.asarray(train["scale"], np.float32))


def decode_latents(module, params: PyTree, shift: np.ndarray, scale: np.ndarray,
                   z: jax.Array) -> jax.Array:
  """Images from normalised latents ``[B, h, w, C]``: un-normalise, then decode."""
  return module.apply({"params": params}, z * scale + shift, method=module.decode)


class LazyFirstStage:
  """The first stage named by a config field, loaded on first use and kept.

  First use is usually inside a jitted sampler, so the checkpoint is read eagerly
  (``jax.ensure_compile_time_eval``), not as part of the trace. ``decode`` is the
  identity when ``path`` is empty (a family trained on pixels).
  """

  def __init__(self, path: str, config: ml_collections.ConfigDict):
    self.path, self.config, self._stage = path, config, None

  @property
  def stage(self) -> tuple[Any, PyTree, np.ndarray, np.ndarray] | None:
    """``(module, params, shift, scale)`` (``load_first_stage``), or None."""
    if not self.path:
      return None
    if self._stage is None:
      with jax.ensure_compile_time_eval():
        self._stage = load_first_stage(self.path, self.config)
    return self._stage

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents -> images (z * scale + shift, then the decoder)."""
    stage = self.stage
    return latents if stage is None else decode_latents(*stage, latents)
