"""DDPM-style U-Net score network (Ho et al. 2020; score_sde ``models/ddpm.py``).

``UNet()`` with its defaults is a small, CPU-friendly network (8x8x1 digits, 2-D toy
images); the score_sde ``ddpm`` CIFAR-10 model (``configs/vp/ddpm/cifar10_continuous.py``)
is ``UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
dropout=0.1)`` -- 35,218,947 parameters for 3 channels; with ``attn_every_up_block=True``
it is Ho et al.'s original (35,746,307, DDPM paper's "35.7M"). Both are pinned in
tests/test_models.py.

Structure (score_sde DDPM): sinusoidal embedding of ``time_scale * t`` (score_sde's
continuous VP feeds ``999 t``) with ``ch`` features -> Dense(4 ch) -> SiLU -> Dense(4 ch);
3x3 input conv; per level ``num_res_blocks`` DDPM residual blocks (+ attention at the
listed resolutions), then a stride-2 conv downsample; middle res/attn/res; per level on
the way up ``num_res_blocks + 1`` blocks on the concatenated skip, attention, nearest
upsample + conv; GroupNorm, SiLU, zero-initialised 3x3 output conv.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsgm_jax.models import layers

Array = jax.Array


class UNet(nn.Module):
  """DDPM U-Net ``s(x, t)`` on NHWC images.

  Attributes:
    ch: base channel count (``nf``); the time embedding has ``4 ch`` features.
    ch_mult: channel multiplier per resolution level (one level per entry; every level
      but the last halves the resolution).
    num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
    attn_resolutions: spatial sizes (height) at which self-attention follows each block.
    dropout: dropout rate inside residual blocks (active only with ``train=True``).
    out_channels: output channels (``None``: same as the input).
    resamp_with_conv: convolutional (True) or parameter-free resampling.
    attn_every_up_block: on the way up, attend after *every* block at an attention
      resolution, as Ho et al.'s original ``diffusion_tf`` U-Net does (CIFAR-10:
      35,746,307 params, the paper's "35.7M"); ``False`` is score_sde's port, with one
      attention per level after the blocks (35,218,947).
    time_scale: ``t`` is multiplied by this before the sinusoidal embedding.
    max_groups: cap on the GroupNorm group count (groups adapt to small channel counts,
      see ``layers.num_groups_for``).
    dtype: computation dtype (parameters are float32).
  """

  ch: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  out_channels: int | None = None
  resamp_with_conv: bool = True
  attn_every_up_block: bool = False
  time_scale: float = 999.0
  max_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    """Evaluates the network.

    Args:
      x: images ``[B, H, W, C]``; ``H`` and ``W`` divisible by ``2 ** (len(ch_mult) - 1)``.
      t: continuous times ``[B]`` in ``[0, 1]``.
      train: enables dropout (then pass ``rngs={"dropout": key}`` when ``dropout > 0``).

    Returns:
      ``[B, H, W, out_channels or C]`` in float32.
    """
    num_levels = len(self.ch_mult)
    if x.shape[1] % (2 ** (num_levels - 1)) or x.shape[2] % (2 ** (num_levels - 1)):
      raise ValueError(f"UNet: spatial size {x.shape[1:3]} not divisible by "
                       f"2**{num_levels - 1} (ch_mult={tuple(self.ch_mult)})")
    dtype = self.dtype
    block = lambda out_ch=None: layers.ResnetBlockDDPM(  # noqa: E731
        out_ch=out_ch, dropout=self.dropout, init_scale=0.0, max_groups=self.max_groups,
        dtype=dtype)
    attn = lambda: layers.AttnBlock(init_scale=0.0, max_groups=self.max_groups,  # noqa: E731
                                    dtype=dtype)

    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    temb = layers.sinusoidal_embedding(t * self.time_scale, self.ch)
    # The embedding MLP runs in float32, as the references run it outside autocast.
    temb = layers.dense(4 * self.ch, jnp.float32, name="temb_0")(temb)
    temb = layers.dense(4 * self.ch, jnp.float32, name="temb_1")(nn.silu(temb))
    temb = temb.astype(dtype)

    hs = [layers.conv3x3(self.ch, dtype, name="conv_in")(x.astype(dtype))]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = block(self.ch * mult)(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if level != num_levels - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dtype)(hs[-1]))

    h = hs[-1]
    h = block()(h, temb, train)
    h = attn()(h)
    h = block()(h, temb, train)

    for level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.ch * self.ch_mult[level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        if self.attn_every_up_block and h.shape[1] in self.attn_resolutions:
          h = attn()(h)
      if not self.attn_every_up_block and h.shape[1] in self.attn_resolutions:
        h = attn()(h)
      if level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=dtype)(h)
    assert not hs

    h = nn.silu(layers.group_norm(h.shape[-1], dtype, "norm_out", self.max_groups)(h))
    out_ch = self.out_channels or x.shape[-1]
    h = layers.conv3x3(out_ch, dtype, init_scale=0.0, name="conv_out")(h)
    return h.astype(jnp.float32)
