"""One explicit mapping from ``config.model.name`` to a score-network builder.

A builder takes ``config.model`` and the data shape and returns a flax module whose call
is ``module(x, t, train=...)``. Builders translate config fields to constructor fields in
one place, so a config typo never reaches a module.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

Builder = Callable[[ml_collections.ConfigDict, tuple[int, ...], int, object], nn.Module]


def _mlp(model: ml_collections.ConfigDict, in_shape, out_channels, dtype) -> nn.Module:
  from lsgm_jax.models.mlp import ScoreMLP
  if len(in_shape) != 1:
    raise ValueError(f"config.model.name='mlp' needs vector data, got shape {in_shape}")
  return ScoreMLP(hidden=int(model.hidden), num_hidden_layers=int(model.num_hidden_layers),
                  out_dim=out_channels, time_input=model.time_input,
                  fourier_scale=float(model.fourier_scale), dtype=dtype)


def _unet(model: ml_collections.ConfigDict, in_shape, out_channels, dtype) -> nn.Module:
  from lsgm_jax.models.unet import UNet
  if len(in_shape) != 3:
    raise ValueError(f"config.model.name='unet' needs HWC images, got shape {in_shape}")
  return UNet(ch=int(model.nf), ch_mult=tuple(model.ch_mult),
              num_res_blocks=int(model.num_res_blocks),
              attn_resolutions=tuple(model.attn_resolutions), dropout=float(model.dropout),
              out_channels=out_channels, scan_blocks=bool(model.scan_blocks), dtype=dtype)


def _ncsnpp(model: ml_collections.ConfigDict, in_shape, out_channels, dtype) -> nn.Module:
  from lsgm_jax.models.ncsnpp import NCSNpp
  if len(in_shape) != 3:
    raise ValueError(f"config.model.name='ncsnpp' needs HWC images, got shape {in_shape}")
  return NCSNpp(
      nf=int(model.nf), ch_mult=tuple(model.ch_mult), num_res_blocks=int(model.num_res_blocks),
      attn_resolutions=tuple(model.attn_resolutions), dropout=float(model.dropout),
      fir=bool(model.fir), fir_kernel=tuple(model.fir_kernel),
      skip_rescale=bool(model.skip_rescale), resblock_type=model.resblock_type,
      progressive=model.progressive, progressive_input=model.progressive_input,
      progressive_combine=model.progressive_combine, init_scale=float(model.init_scale),
      embedding_type=model.embedding_type, fourier_scale=float(model.fourier_scale),
      fourier_log_t=bool(model.fourier_log_t), time_scale=float(model.time_scale),
      in_channels=int(in_shape[-1]),
      out_channels=out_channels, remat=bool(model.remat),
      scan_blocks=bool(model.scan_blocks), dtype=dtype)


MODELS: dict[str, Builder] = {"mlp": _mlp, "unet": _unet, "ncsnpp": _ncsnpp}


def build_model(model: ml_collections.ConfigDict, in_shape: tuple[int, ...],
                out_channels: int, dtype=jnp.float32) -> nn.Module:
  """The score network named by ``model.name`` for inputs of ``in_shape`` (no batch)."""
  if model.name not in MODELS:
    raise ValueError(
        f"config.model.name={model.name!r} is not one of {sorted(MODELS)}")
  return MODELS[model.name](model, tuple(in_shape), int(out_channels), dtype)
