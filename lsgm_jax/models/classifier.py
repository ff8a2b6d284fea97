"""Time-dependent classifiers p_t(y | x_t) for classifier guidance (issue 13).

Score SDE (Song et al. 2021, Sec. 5 / App. I, "controllable generation") trains a
classifier on x_t drawn from the SDE's kernel and steers sampling with
grad_x log p_t(y | x_t). The image classifier here is the down half of the DDPM U-Net
(``models/unet.py``) with the same sinusoidal time embedding (``time_scale * t`` -> two
dense layers) feeding every residual block, then GroupNorm, SiLU, global average pooling
and a dense head with ``num_classes`` logits (score_sde's classifier is a Wide ResNet with
the same time conditioning; the encoder keeps this codebase's blocks). For vectors the
classifier is ``ScoreMLP`` with ``num_classes`` outputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lsgm_jax.models import layers

Array = jax.Array


class EncoderClassifier(nn.Module):
  """U-Net encoder + classification head: ``logits(x, t)``.

  Attributes:
    num_classes: number of logits.
    ch: base channels; the time embedding has ``4 ch`` features.
    ch_mult: channel multiplier per level (every level but the last halves H and W).
    num_res_blocks: residual blocks per level.
    dropout: dropout inside residual blocks (``train=True``).
    time_scale: ``t`` is multiplied by this before the sinusoidal embedding (999 as the
      U-Net score model, so both see the same time features).
    dtype: computation dtype.
  """

  num_classes: int
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  dropout: float = 0.0
  time_scale: float = 999.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    """Args: x ``[B, H, W, C]``, t ``[B]``, train. Returns float32 logits ``[B, K]``."""
    dtype = self.dtype
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    temb = layers.sinusoidal_embedding(t * self.time_scale, self.ch)
    temb = layers.dense(4 * self.ch, jnp.float32, name="temb_0")(temb)
    temb = layers.dense(4 * self.ch, jnp.float32, name="temb_1")(nn.silu(temb)).astype(dtype)
    h = layers.conv3x3(self.ch, dtype, name="conv_in")(x.astype(dtype))
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = layers.ResnetBlockDDPM(out_ch=self.ch * mult, dropout=self.dropout,
                                   init_scale=0.0, dtype=dtype)(h, temb, train)
      if level != len(self.ch_mult) - 1:
        h = layers.Downsample(with_conv=True, dtype=dtype)(h)
    h = layers.ResnetBlockDDPM(dropout=self.dropout, init_scale=0.0, dtype=dtype)(h, temb, train)
    h = nn.silu(layers.group_norm(h.shape[-1], dtype, name="norm_out")(h))
    h = jnp.mean(h, axis=(1, 2))
    return layers.dense(self.num_classes, jnp.float32, name="head")(h.astype(jnp.float32))


def build_classifier(model: ml_collections.ConfigDict, in_shape: tuple[int, ...],
                     num_classes: int, dtype=jnp.float32) -> nn.Module:
  """The classifier for ``config.model`` (``unet``-style fields for images, ``mlp`` for
  vectors) on inputs of ``in_shape`` (no batch), with ``num_classes`` logits."""
  if model.name == "mlp":
    from lsgm_jax.models.mlp import ScoreMLP
    if len(in_shape) != 1:
      raise ValueError(f"config.model.name='mlp' needs vector data, got shape {in_shape}")
    return ScoreMLP(hidden=int(model.hidden), num_hidden_layers=int(model.num_hidden_layers),
                    out_dim=num_classes, time_input=model.time_input,
                    fourier_scale=float(model.fourier_scale), dtype=dtype)
  if model.name == "unet":
    if len(in_shape) != 3:
      raise ValueError(f"config.model.name='unet' needs HWC images, got shape {in_shape}")
    return EncoderClassifier(num_classes=num_classes, ch=int(model.nf),
                             ch_mult=tuple(model.ch_mult),
                             num_res_blocks=int(model.num_res_blocks),
                             dropout=float(model.dropout), dtype=dtype)
  raise ValueError(f"config.model.name={model.name!r} is not one of ('mlp', 'unet') for "
                   "method 'noise_classifier'")
