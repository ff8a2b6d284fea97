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

from lsgm_jax.models import layers, scan_layout

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
    scan_blocks: run every maximal run of consecutive residual blocks of a level whose
      inputs have identical shapes (with the attention after each, where there is one)
      as one ``nn.scan`` over stacked parameters (``scan_layout.unet_run_name``): the
      same function and parameter count, fewer block bodies to compile (score_vae's
      CIFAR-10 prior: 13 block bodies for 38 blocks). The unrolled layout keeps flax's automatic
      names; ``scan_layout.to_unrolled_params`` / ``to_scanned_params`` convert. A model
      whose levels have one block each (the digits U-Net) is the same either way.
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
  scan_blocks: bool = True
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
    block_kwargs = lambda out_ch=None: dict(  # noqa: E731
        out_ch=out_ch, dropout=self.dropout, init_scale=0.0, max_groups=self.max_groups,
        dtype=dtype)
    attn_kwargs = dict(init_scale=0.0, max_groups=self.max_groups, dtype=dtype)
    # Blocks are named as flax numbers the unrolled model's unnamed modules, so a run of
    # ``n`` blocks stands for ResnetBlockDDPM_{b}..{b + n - 1} (and AttnBlock_{a}..).
    count = {"block": 0, "attn": 0}

    def block(out_ch: int | None = None) -> nn.Module:
      count["block"] += 1
      return layers.ResnetBlockDDPM(**block_kwargs(out_ch),
                                    name=f"ResnetBlockDDPM_{count['block'] - 1}")

    def attn() -> nn.Module:
      count["attn"] += 1
      return layers.AttnBlock(**attn_kwargs, name=f"AttnBlock_{count['attn'] - 1}")

    def scanned(length: int, out_ch: int, with_attn: bool, emit: bool) -> nn.Module:
      name = scan_layout.unet_run_name(count["block"], count["attn"])
      count["block"] += length
      count["attn"] += length if with_attn else 0
      return scan_layout.scanned_run(length)(
          layers.ResnetBlockDDPM, layers.AttnBlock, block_kwargs(out_ch),
          attn_kwargs if with_attn else None, train, emit=emit, name=name)

    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    temb = layers.sinusoidal_embedding(t * self.time_scale, self.ch)
    # The embedding MLP runs in float32, as the references run it outside autocast.
    temb = layers.dense(4 * self.ch, jnp.float32, name="temb_0")(temb)
    temb = layers.dense(4 * self.ch, jnp.float32, name="temb_1")(nn.silu(temb))
    temb = temb.astype(dtype)

    hs = [layers.conv3x3(self.ch, dtype, name="conv_in")(x.astype(dtype))]
    for level, mult in enumerate(self.ch_mult):
      out_ch = self.ch * mult
      with_attn = hs[-1].shape[1] in self.attn_resolutions
      # Block i's input is block i-1's output, so only block 0 can differ.
      keys = [hs[-1].shape[-1]] + [out_ch] * (self.num_res_blocks - 1)
      for start, stop in scan_layout.runs(keys, self.scan_blocks):
        if stop - start > 1:
          _, ys = scanned(stop - start, out_ch, with_attn, emit=True)(hs[-1], None, temb)
          hs.extend(ys[j] for j in range(stop - start))
          continue
        h = block(out_ch)(hs[-1], temb, train)
        if with_attn:
          h = attn()(h)
        hs.append(h)
      if level != num_levels - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dtype)(hs[-1]))

    h = hs[-1]
    h = block()(h, temb, train)
    h = attn()(h)
    h = block()(h, temb, train)

    for level in reversed(range(num_levels)):
      out_ch = self.ch * self.ch_mult[level]
      with_attn = h.shape[1] in self.attn_resolutions
      n_up = self.num_res_blocks + 1
      skips = [hs.pop() for _ in range(n_up)]
      # Block i sees (h, skip i); h has out_ch channels from block 1 on.
      keys = [(h.shape[-1] if i == 0 else out_ch, skips[i].shape) for i in range(n_up)]
      for start, stop in scan_layout.runs(keys, self.scan_blocks):
        if stop - start > 1:
          h, _ = scanned(stop - start, out_ch, with_attn and self.attn_every_up_block,
                         emit=False)(h, jnp.stack(skips[start:stop]), temb)
          continue
        h = block(out_ch)(jnp.concatenate([h, skips[start]], axis=-1), temb, train)
        if self.attn_every_up_block and with_attn:
          h = attn()(h)
      if not self.attn_every_up_block and with_attn:
        h = attn()(h)
      if level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=dtype)(h)
    assert not hs

    h = nn.silu(layers.group_norm(h.shape[-1], dtype, "norm_out", self.max_groups)(h))
    out_ch = self.out_channels or x.shape[-1]
    h = layers.conv3x3(out_ch, dtype, init_scale=0.0, name="conv_out")(h)
    return h.astype(jnp.float32)
