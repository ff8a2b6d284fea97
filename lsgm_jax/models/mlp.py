"""Fully connected score networks for low-dimensional (toy 2-D) data.

One module class, :class:`ScoreMLP`, covers both the CLD-SGM toy network and embedded
variants. The CLD-SGM toy configuration (configs/default_toy_data.txt of
nv-tlabs/CLD-SGM) feeds the raw concatenation (x, v, t) -- 5 numbers for 2-D data --
through 5->128, three 128->128 and 128->2 dense layers with SiLU in between:
``ScoreMLP(hidden=128, num_hidden_layers=4, out_dim=2, time_input="raw")`` has exactly
50,562 trainable parameters (REFERENCE_NOTES.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsgm_jax.models import layers

Array = jax.Array

TIME_INPUTS = ("raw", "fourier", "positional")


class ScoreMLP(nn.Module):
  """An MLP score network ``s(x, t)`` for ``x`` of shape ``[B, D]``.

  Attributes:
    hidden: width of every hidden layer.
    num_hidden_layers: number of ``Dense(hidden)`` layers (each followed by SiLU)
      before the output layer. The first one maps the input features to ``hidden``.
    out_dim: size of the output; ``None`` means the input size ``D``.
    time_input: how ``t`` enters. ``"raw"``: ``t`` itself is appended to ``x`` as one
      extra feature (CLD-SGM toy MLP, no parameters). ``"fourier"``: fixed Gaussian
      Fourier features of ``t`` (score_sde ``GaussianFourierProjection``, here of ``t``
      itself, not ``log t``), appended. ``"positional"``: sinusoidal features of
      ``t * time_scale``, appended.
    embedding_dim: number of time features for ``"fourier"`` / ``"positional"``.
    fourier_scale: scale of the Gaussian Fourier frequencies.
    time_scale: multiplier applied to ``t`` before the positional embedding.
    dtype: computation dtype (parameters stay float32).
  """

  hidden: int = 128
  num_hidden_layers: int = 4
  out_dim: int | None = None
  time_input: str = "raw"
  embedding_dim: int = 32
  fourier_scale: float = 16.0
  time_scale: float = 999.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    """Evaluates the network.

    Args:
      x: inputs ``[B, D]``.
      t: continuous times ``[B]`` in ``[0, 1]``.
      train: unused (no dropout); kept for the shared score-net signature.

    Returns:
      ``[B, out_dim]`` (``[B, D]`` when ``out_dim`` is ``None``), float32 whatever
      ``dtype`` (losses are computed in full precision).
    """
    del train
    if self.time_input not in TIME_INPUTS:
      raise ValueError(f"ScoreMLP.time_input must be one of {TIME_INPUTS}, got {self.time_input!r}")
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    if self.time_input == "raw":
      temb = t[:, None]
    elif self.time_input == "fourier":
      temb = layers.GaussianFourierProjection(
          embedding_size=self.embedding_dim // 2, scale=self.fourier_scale, name="fourier")(t)
    else:
      temb = layers.sinusoidal_embedding(t * self.time_scale, self.embedding_dim)
    h = jnp.concatenate([x.astype(self.dtype), temb.astype(self.dtype)], axis=-1)
    for i in range(self.num_hidden_layers):
      h = nn.Dense(self.hidden, dtype=self.dtype, name=f"dense_{i}")(h)
      h = nn.silu(h)
    out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
    return nn.Dense(out_dim, dtype=self.dtype, name="out")(h).astype(jnp.float32)
