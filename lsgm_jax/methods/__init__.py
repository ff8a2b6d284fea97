"""Model families, each a ``methods.base.Method``; one explicit name -> class mapping."""

from __future__ import annotations

import ml_collections

from lsgm_jax.methods.autoencoder import Autoencoder
from lsgm_jax.methods.base import Method
from lsgm_jax.methods.distill import Distill
from lsgm_jax.methods.latent_vae import LatentVAE
from lsgm_jax.methods.lsgm import LSGM
from lsgm_jax.methods.lsgm_cld import LatentCLD
from lsgm_jax.methods.noise_classifier import NoiseClassifier
from lsgm_jax.methods.score_vae import ScoreVAE
from lsgm_jax.methods.sgm import SGM

METHODS: dict[str, type[Method]] = {
    "autoencoder": Autoencoder, "sgm": SGM, "latent_vae": LatentVAE, "lsgm": LSGM,
    "noise_classifier": NoiseClassifier, "score_vae": ScoreVAE,
    "distill": Distill}


def build_method(config: ml_collections.ConfigDict, data_info) -> Method:
  """The method named by ``config.method``, built for the dataset ``data_info``."""
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r} is not one of {sorted(METHODS)}")
  if config.method == "lsgm" and config.lsgm.sde_type == "cld":
    return LatentCLD(config, data_info)  # LSGM with CLD as the latent diffusion
  return METHODS[config.method](config, data_info)
