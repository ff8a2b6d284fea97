"""The FID InceptionV3 (pytorch-fid's variant of torchvision's Inception3) in Flax, and
the feature extractor built on it.

Architecture (pytorch-fid ``fid_inception_v3``, Szegedy et al. 2016 Fig. 5-7 as ported
from TF's 2015-12-05 graph): every conv is ``BasicConv2d`` = conv without bias,
BatchNorm (eps 1e-3), ReLU. Mixed_5b-5d (``FIDInceptionA``), 6b-6e (``FIDInceptionC``)
and 7b (``FIDInceptionE_1``) average-pool their pool branch over 3x3, stride 1, with
``count_include_pad=False`` (TF's padding-excluding mean); Mixed_7c (``FIDInceptionE_2``)
max-pools there instead. 1x7 / 7x1 and 1x3 / 3x1 convs pad only along their long axis.
Outputs: ``pool3`` (the 2048-d global average pool, the FID feature), ``logits`` (1008
classes, used by the Inception Score) and ``logits_unbiased`` (the same without the fc
bias, as in TF's graph).

Every conv and the dense layer run at ``precision=HIGHEST``: TPUs default to bf16
passes and GPUs to TF32, either of which moves FID in the second decimal.

Module and parameter names follow torchvision's, so a state dict maps one to one
(``Mixed_6b.branch7x7_2.conv.weight`` -> ``Mixed_6b/branch7x7_2/conv/kernel``); see
``inception_weights``.

Preprocessing of uint8 NHWC images (``preprocess``): resize to 299x299 with
``resize="torch"`` (``F.interpolate(bilinear, align_corners=False)``, half-pixel
centres, no antialias: pytorch-fid, LSGM, EDM) or ``"tf1"`` (TF1's legacy
``resize_bilinear``, no half-pixel offset: the TF-Hub graph of score_sde / CLD-SGM), then
normalise with ``"torch"`` (x / 255 * 2 - 1) or ``"tf"`` ((x - 128) / 128).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST
INPUT_SIZE = 299
NUM_CLASSES = 1008
RESIZE_MODES = ("torch", "tf1")
NORMALIZE_MODES = ("torch", "tf")


class BasicConv2d(nn.Module):
  """torchvision ``BasicConv2d``: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=self.stride,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=HIGHEST,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _conv(features: int, kernel, stride: int = 1, padding=(0, 0), *, name: str):
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return BasicConv2d(features, kernel, stride, padding, name=name)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF's average pool ignores the zero padding: count_include_pad=False.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  """Mixed_5b-5d (``FIDInceptionA``)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv(64, 1, name="branch1x1")(x)
    b5 = _conv(48, 1, name="branch5x5_1")(x)
    b5 = _conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = _conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = _conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = _conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = _conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv(384, 3, stride=2, name="branch3x3")(x)
    bd = _conv(64, 1, name="branch3x3dbl_1")(x)
    bd = _conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = _conv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-6e (``FIDInceptionC``): factorised 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _conv(192, 1, name="branch1x1")(x)
    b7 = _conv(c7, 1, name="branch7x7_1")(x)
    b7 = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = _conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = _conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = _conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv(192, 1, name="branch3x3_1")(x)
    b3 = _conv(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = _conv(192, 1, name="branch7x7x3_1")(x)
    b7 = _conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = _conv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (``FIDInceptionE_1``, average pool) and 7c (``FIDInceptionE_2``, max
  pool: the TF graph's quirk that pytorch-fid keeps)."""
  pool: str  # "avg" | "max"

  @nn.compact
  def __call__(self, x):
    b1 = _conv(320, 1, name="branch1x1")(x)
    b3 = _conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([_conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          _conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = _conv(448, 1, name="branch3x3dbl_1")(x)
    bd = _conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([_conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          _conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3(x)
    else:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    bp = _conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3 on normalised NHWC input (any size >= 75; 299 in practice).

  Returns ``{"pool3": [N, 2048], "logits": [N, 1008], "logits_unbiased": [N, 1008]}``.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = _conv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = _conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = _conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = _conv(80, 1, name="Conv2d_3b_1x1")(x)
    x = _conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=HIGHEST, name="fc")
    logits = fc(pool3)
    unbiased = logits - fc.variables["params"]["bias"]
    return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


# --- preprocessing ------------------------------------------------------------------------

def resize_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
  """[out_size, in_size] bilinear interpolation weights along one axis.

  ``torch``: ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``:
  source ``(i + 0.5) * in / out - 0.5`` clamped at 0, two taps, no antialiasing filter
  even when shrinking. ``tf1``: TF1 ``resize_bilinear(align_corners=False,
  half_pixel_centers=False)``: source ``i * in / out``.
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize={mode!r} is not one of {RESIZE_MODES}")
  # Source positions in float32, as both references compute them (torch's
  # area_pixel_compute_source_index and TF's legacy scaler use a float scale): in float64
  # a 512 -> 299 resize moves by up to 5e-6 of the pixel range.
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  i = np.arange(out_size, dtype=f32)
  if mode == "torch":
    src = np.maximum(scale * (i + f32(0.5)) - f32(0.5), f32(0.0))
  else:
    src = i * scale
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(f32), f32(0.0), f32(1.0)).astype(np.float64)
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def resize(images: jax.Array, size: int, mode: str) -> jax.Array:
  """Bilinear resize of NHWC float images to ``size`` x ``size`` (separable matmuls at
  HIGHEST precision; identity when already that size)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  wh = jnp.asarray(resize_matrix(h, size, mode), jnp.float32)
  ww = jnp.asarray(resize_matrix(w, size, mode), jnp.float32)
  out = jnp.einsum("oh,nhwc->nowc", wh, images, precision=HIGHEST)
  return jnp.einsum("pw,nowc->nopc", ww, out, precision=HIGHEST)


def normalize(images: jax.Array, mode: str) -> jax.Array:
  """Pixel values in [0, 255] -> the network's input range [-1, 1]."""
  if mode == "torch":
    return images / 255.0 * 2.0 - 1.0
  if mode == "tf":
    return (images - 128.0) / 128.0
  raise ValueError(f"normalize={mode!r} is not one of {NORMALIZE_MODES}")


def preprocess(images: jax.Array, resize_mode: str = "torch",
               normalize_mode: str = "torch", size: int = INPUT_SIZE) -> jax.Array:
  """uint8 (or float in [0, 255]) NHWC with 1 or 3 channels -> normalised 299x299x3
  (``size`` other than 299 only for smoke tests: published FIDs are all at 299)."""
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[-1] != 3:
    raise ValueError(f"images must have 1 or 3 channels, got shape {images.shape}")
  return normalize(resize(x, size, resize_mode), normalize_mode)


QUANTIZE_MODES = ("round", "floor", "none")


def to_pixels(samples: np.ndarray | jax.Array, *, centered: bool, quantize: str = "round"):
  """Model samples in [-1, 1] (``centered``) or [0, 1] -> pixel values in [0, 255].

  ``round``: uint8 by rounding (EDM); ``floor``: uint8 by truncation after clipping
  (score_sde / CLD-SGM ``np.clip(x * 255, 0, 255).astype(np.uint8)``); ``none``: float
  pixels, clipped only (LSGM feeds float samples to the network).
  """
  xp = jnp if isinstance(samples, jax.Array) else np
  x = xp.asarray(samples, xp.float32)
  if centered:
    x = (x + 1.0) / 2.0
  x = xp.clip(x * 255.0, 0.0, 255.0)
  if quantize == "round":
    return xp.round(x).astype(xp.uint8)
  if quantize == "floor":
    return xp.floor(x).astype(xp.uint8)
  if quantize == "none":
    return x
  raise ValueError(f"quantize={quantize!r} is not one of {QUANTIZE_MODES}")


# --- the public extractor -----------------------------------------------------------------

class FeatureExtractor:
  """``extract(images) -> {"pool3": [N, 2048], "logits": [N, 1008]}`` as NumPy float32.

  Images (uint8 NHWC, or float pixels in [0, 255]) are cut into batches of
  ``batch_size``, the last one padded, so one program per input size is compiled; each
  batch is split over ``devices`` (default: this process's local devices, so that hosts
  extract their own images independently and only statistics are merged).
  """

  def __init__(self, variables, *, resize: str = "torch", normalize: str = "torch",
               batch_size: int = 200, devices: Sequence[jax.Device] | None = None,
               sha256: str = "", input_size: int = INPUT_SIZE):
    if resize not in RESIZE_MODES:
      raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES}")
    if normalize not in NORMALIZE_MODES:
      raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZE_MODES}")
    if input_size < 75:
      raise ValueError(f"Inception input size {input_size} < 75 (the network's minimum)")
    self.resize_mode, self.normalize_mode, self.sha256 = resize, normalize, sha256
    self.input_size = int(input_size)
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)
    self._sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("batch"))
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._variables = jax.device_put(variables, replicated)
    # Two programs: the resize (one per input size, cheap to compile) and the network
    # (compiled once, always on 299x299).
    self._preprocess = jax.jit(functools.partial(
        preprocess, resize_mode=resize, normalize_mode=normalize, size=self.input_size),
        out_shardings=self._sharding)
    self._network = jax.jit(InceptionV3().apply, out_shardings=self._sharding)

  def metadata(self) -> dict[str, str]:
    """What identifies these features (stored with every statistic)."""
    return {"inception_sha256": self.sha256, "resize": self.resize_mode,
            "normalize": self.normalize_mode, "inception_size": self.input_size}

  def device_batch(self, images: jax.Array) -> dict[str, jax.Array]:
    """Features of one on-device batch whose size is a multiple of the device count."""
    return self._network(self._variables, self._preprocess(images))

  def __call__(self, images, keys: Sequence[str] = ("pool3", "logits")
               ) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f"images must be NHWC, got shape {images.shape}")
    if images.dtype != np.uint8:
      images = images.astype(np.float32)
    n, bs = len(images), self.batch_size
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    pending: list = []  # batch i + 1 is dispatched before batch i is fetched (overlap)

    def fetch(item):
      real, feats = item
      for k in keys:
        out[k].append(np.asarray(feats[k])[:real])

    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      real = len(chunk)
      if real < bs:
        pad = np.zeros((bs - real,) + chunk.shape[1:], chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      feats = self.device_batch(jax.device_put(chunk, self._sharding))
      pending.append((real, {k: feats[k] for k in keys}))
      if len(pending) > 1:
        fetch(pending.pop(0))
    for item in pending:
      fetch(item)
    return {k: (np.concatenate(v) if v else np.zeros((0,), np.float32))
            for k, v in out.items()}


@functools.lru_cache(maxsize=4)
def _cached_extractor(weights_path: str, resize: str, normalize: str, batch_size: int,
                      devices: tuple | None, input_size: int) -> FeatureExtractor:
  from lsgm_jax.evaluation import inception_weights
  variables, sha = inception_weights.load(weights_path)
  return FeatureExtractor(variables, resize=resize, normalize=normalize,
                          batch_size=batch_size, devices=devices, sha256=sha,
                          input_size=input_size)


def feature_extractor(weights_path: str, resize: str = "torch", normalize: str = "torch",
                      batch_size: int = 200, devices: Sequence[jax.Device] | None = None,
                      input_size: int = INPUT_SIZE) -> FeatureExtractor:
  """The public entry point: an extractor with the Inception weights at ``weights_path``
  (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, or ``.npz`` /
  ``.safetensors`` with torchvision names; nothing is downloaded).

  ``extract = feature_extractor(path)``; ``extract(images)`` with uint8 NHWC images (any
  size, 1 or 3 channels) returns NumPy ``{"pool3": [N, 2048], "logits": [N, 1008]}``.
  Extractors are cached per (path, modes, batch size, devices); ``devices`` defaults to
  this process's local devices.
  """
  if not weights_path:
    raise ValueError("no Inception weights: set config.eval.inception_weights to the path "
                     "of pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release) or "
                     "an .npz / .safetensors with torchvision names")
  return _cached_extractor(str(weights_path), resize, normalize, int(batch_size),
                           None if devices is None else tuple(devices), int(input_size))
