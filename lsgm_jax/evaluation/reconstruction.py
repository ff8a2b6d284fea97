"""Reconstruction metrics (ScoreVAE tables, score_vae_paper.txt Tables 1-2; autoencoders).

* L2: the Euclidean norm of the flattened difference per image, on [0, 1] images at native
  resolution, averaged over images (``objectives.score_vae.per_image_l2``; the paper
  code's ``torch.linalg.vector_norm(..., dim=1)``, not the MSE).
* LPIPS (VGG, Zhang et al. 2018) with weights read from an npz (``models/perceptual.py``
  layout; nothing is downloaded). The ``lpips`` package expects images in [-1, 1]; the
  paper code passed its [0, 1] images unchanged (``lpips.LPIPS(net='vgg')(recon, batch)``
  without ``normalize=True``). ``reference_input=False`` (default) maps [0, 1] to
  [-1, 1] first; ``True`` reproduces the paper code's numbers. The AlexNet variant (the
  LPIPS paper's default) reads the same way; ``evaluation/lpips_weights.py`` converts the
  published torchvision + LPIPS ``.pth`` files.
* MSE and PSNR (dB, peak 1) of [0, 1] images, per image.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from lsgm_jax.models.perceptual import PerceptualNet, load_perceptual_net
from lsgm_jax.objectives.autoencoder_losses import lpips_distance, mse, psnr
from lsgm_jax.objectives.score_vae import per_image_l2


def load_lpips(path: str, field: str = "config.score_vae.lpips_weights_path"
               ) -> PerceptualNet:
  """The LPIPS network of the npz at ``path``; a missing file names ``field``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{field}={path!r}: no such file (an npz of VGG16 + LPIPS "
                            "heads, layout in lsgm_jax/models/perceptual.py)")
  return load_perceptual_net(path)


def lpips(net: PerceptualNet, x_unit: jax.Array, y_unit: jax.Array, *, size: int = 0,
          reference_input: bool = False, params: dict | None = None) -> jax.Array:
  """LPIPS per example ``[B]`` between images in [0, 1].

  Args:
    net: the loaded perceptual network.
    x_unit, y_unit: ``[B, H, W, C]`` images in [0, 1].
    size: resize both (bilinear, half-pixel centres as torch's ``align_corners=False``)
      to ``size x size`` first; 0 = native resolution.
    reference_input: feed the [0, 1] images as they are (the paper code's usage).
    params: the backbone's params as a traced argument (``net.params`` by default). Under
      ``jit`` pass them explicitly: closed-over weights become constants that XLA folds
      at every compile (VGG16: 14.7M of them).
  """
  def prepare(a):
    a = jnp.asarray(a, jnp.float32)
    if size and a.shape[1] != size:
      a = jax.image.resize(a, (a.shape[0], size, size, a.shape[3]), "bilinear",
                           antialias=False)
    return a if reference_input else 2.0 * a - 1.0
  return lpips_distance(net.features(prepare(x_unit), params),
                        net.features(prepare(y_unit), params), net.lin)


def reconstruction_metrics(x_unit: jax.Array, y_unit: jax.Array,
                           net: PerceptualNet | None = None, *, size: int = 0
                           ) -> dict[str, jax.Array]:
  """Per image ``[B]``: ``l2``, ``mse``, ``psnr`` (peak 1) of [0, 1] images, and
  ``lpips`` (inputs mapped to [-1, 1]) when ``net`` is given."""
  terms = {"l2": per_image_l2(x_unit, y_unit), "mse": mse(x_unit, y_unit),
           "psnr": psnr(x_unit, y_unit, 1.0)}
  if net is not None:
    terms["lpips"] = lpips(net, x_unit, y_unit, size=size)
  return terms