"""NCSN++ score network (Song et al. 2021, score_sde ``models/ncsnpp.py``).

One module, :class:`NCSNpp`; the paper models are configurations of it, in
``lsgm_jax.presets.ncsnpp`` (their counts pinned in tests/test_models.py):

* ``cld_cifar10_config()`` -- CLD-SGM CIFAR-10 (nv-tlabs/CLD-SGM configs/default_cifar10.txt
  + specific_cifar10.txt): input u = (x, v) with 6 channels, output the velocity score
  (3 channels), Fourier features of log t: 107,593,859 trainable parameters.
* ``lsgm_cifar10_config()`` / ``lsgm_mnist_config()`` -- LSGM's latent-space score model
  (NVlabs/LSGM score_sde/ncsnpp.py with the README commands): 375,561,064 and 63,774,544
  trainable parameters *including* the per-channel mixing logit (180 / 40 entries),
  which the reference registers inside the score network.

Layout (score_sde NCSN++): time embedding -> Dense(4 E) -> SiLU -> Dense(4 E) (E = nf
unless ``embedding_dim`` is set); 3x3 input conv; per level ``num_res_blocks`` residual
blocks (attention after each one at ``attn_resolutions``), then a resampling block
(BigGAN residual block with ``down=True``, or ``Downsample``) and the progressive-input
merge; middle res/attn/res; per level on the way up ``num_res_blocks + 1`` blocks on the
concatenated skip, one attention, the progressive-output step and an up-sampling block;
head GroupNorm, SiLU, 3x3 conv (``init_scale``), unless ``progressive="output_skip"``
whose pyramid is the output.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsgm_jax.models import layers
from lsgm_jax.models.scan_layout import runs, scanned_run
# The parameter-layout conversions, importable from here as before.
from lsgm_jax.models.scan_layout import (  # noqa: F401
    scanned_layout, to_scanned_params, to_unrolled_params, unrolled_layout)

Array = jax.Array

EMBEDDING_TYPES = ("fourier", "positional")
RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")


class _PyramidHead(nn.Module):
  """GroupNorm -> SiLU -> 3x3 conv: the progressive-output branch at one level."""

  features: int
  init_scale: float = 1.0
  max_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array) -> Array:
    """Args: h ``[B,H,W,C]``. Returns ``[B,H,W,features]``."""
    h = nn.silu(layers.group_norm(h.shape[-1], self.dtype, "norm", self.max_groups)(h))
    return layers.conv3x3(self.features, self.dtype, init_scale=self.init_scale,
                          name="conv")(h)


class NCSNpp(nn.Module):
  """NCSN++ ``s(x, t)`` on NHWC images (or latents).

  The defaults are CLD-SGM's CIFAR-10 architecture;
  ``presets.ncsnpp.cld_cifar10_config`` adds its 6 -> 3 channel counts.

  Attributes:
    nf: base channel count.
    ch_mult: channel multiplier per resolution level; level ``i`` runs at
      ``H / 2**i``.
    num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
    attn_resolutions: spatial sizes (height) with self-attention.
    dropout: dropout rate in the residual blocks (only with ``train=True``).
    resamp_with_conv: learned resampling convolutions (``resblock_type="ddpm"`` only;
      BigGAN blocks always resample inside the block).
    fir: FIR (StyleGAN2) resampling instead of nearest / average pooling.
    fir_kernel: FIR taps (NCSN++: 1, 3, 3, 1).
    skip_rescale: divide every residual sum by sqrt(2).
    resblock_type: ``"biggan"`` or ``"ddpm"``.
    progressive: output pyramid: ``"none"``, ``"output_skip"`` or ``"residual"``.
    progressive_input: input pyramid: ``"none"``, ``"input_skip"`` or ``"residual"``.
    progressive_combine: how ``input_skip`` merges: ``"sum"`` or ``"cat"``.
    init_scale: init scale of the last conv of every residual block, of the attention
      output projections and of the output conv (0 -> start at ~0, the references use
      1e-10 for 0).
    embedding_type: ``"fourier"`` (fixed Gaussian Fourier features, ``embedding_dim``
      frequencies -> ``2 embedding_dim`` features) or ``"positional"`` (sinusoidal,
      ``embedding_dim`` features).
    fourier_scale: standard deviation of the Fourier frequencies.
    fourier_log_t: feed ``log t`` (CLD-SGM ``models/ncsnpp.py`` and score_sde's VE
      ``log sigma``) rather than ``t`` to the Fourier features.
    time_scale: ``t`` multiplier for the positional embedding (score_sde continuous VP:
      999; LSGM ``--embedding_scale 1000``).
    embedding_dim: time-embedding width ``E`` (``None``: ``nf``); residual blocks see
      ``4 E`` features (LSGM decouples it: E = 128 with nf = 512).
    in_channels: expected input channels (``None``: whatever is given); CLD: 6.
    out_channels: output channels (``None``: same as the input); CLD: 3.
    mixing_logit_init: if set, adds a trainable ``"mixing_logit"`` parameter of shape
      ``[C_in]`` initialised to this value (LSGM's mixed score, LSGM eq. (9)). The
      network itself never uses it: a method reads ``params["mixing_logit"]``.
    mixing_logit_channels: the logit's size when it is not ``C_in`` (latent CLD: the
      input is (z, v), the logit is per latent channel).
    max_groups: cap on the GroupNorm group count.
    remat: rematerialise residual and attention blocks in the backward pass.
    scan_blocks: run every maximal run of consecutive residual blocks of a level whose
      inputs have identical shapes as one ``nn.scan`` (parameters stacked on a leading
      axis under ``{down,up}_{level}_scan_{first}``): the same function and parameter
      count, one compiled block body per run instead of one per block (the paper
      CIFAR-10 model has 76 blocks and 19 bodies). ``to_unrolled_params`` /
      ``to_scanned_params`` convert between the two layouts.
    dtype: computation dtype (parameters float32; time embedding always float32).
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 8
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  fir: bool = True
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  init_scale: float = 0.0
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  fourier_log_t: bool = True
  time_scale: float = 999.0
  embedding_dim: int | None = None
  in_channels: int | None = None
  out_channels: int | None = None
  mixing_logit_init: float | None = None
  mixing_logit_channels: int | None = None
  max_groups: int = 32
  remat: bool = False
  scan_blocks: bool = True
  dtype: Any = jnp.float32

  def _check(self, x: Array) -> None:
    for field, value, allowed in (("embedding_type", self.embedding_type, EMBEDDING_TYPES),
                                  ("resblock_type", self.resblock_type, RESBLOCK_TYPES),
                                  ("progressive", self.progressive, PROGRESSIVE),
                                  ("progressive_input", self.progressive_input,
                                   PROGRESSIVE_INPUT),
                                  ("progressive_combine", self.progressive_combine, COMBINE)):
      if value not in allowed:
        raise ValueError(f"NCSNpp.{field} must be one of {allowed}, got {value!r}")
    if x.ndim != 4:
      raise ValueError(f"NCSNpp expects NHWC input, got shape {x.shape}")
    if self.in_channels is not None and x.shape[-1] != self.in_channels:
      raise ValueError(f"NCSNpp.in_channels={self.in_channels} but input has "
                       f"{x.shape[-1]} channels")
    div = 2 ** (len(self.ch_mult) - 1)
    if x.shape[1] % div or x.shape[2] % div:
      raise ValueError(f"NCSNpp: spatial size {x.shape[1:3]} not divisible by {div} "
                       f"(ch_mult={tuple(self.ch_mult)})")

  def _time_embedding(self, t: Array) -> Array:
    """``[B]`` times -> ``[B, 4 E]`` float32 embedding (runs in float32 like the references)."""
    emb_dim = self.embedding_dim or self.nf
    if self.embedding_type == "fourier":
      # CLD-SGM: GaussianFourierProjection(embedding_size=nf) of log t -> 2 nf features.
      s = jnp.log(t) if self.fourier_log_t else t
      temb = layers.GaussianFourierProjection(emb_dim, self.fourier_scale, name="fourier")(s)
    else:
      temb = layers.sinusoidal_embedding(t * self.time_scale, emb_dim)
    temb = layers.dense(4 * emb_dim, jnp.float32, name="temb_0")(temb)
    return layers.dense(4 * emb_dim, jnp.float32, name="temb_1")(nn.silu(temb))

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    """Evaluates the network.

    Args:
      x: ``[B, H, W, C_in]`` (CLD: the concatenation (x, v) on channels).
      t: continuous times ``[B]`` in ``(0, 1]`` (``log t`` is taken with
        ``fourier_log_t``, so ``t`` must be positive there).
      train: enables dropout (pass ``rngs={"dropout": key}``).

    Returns:
      ``[B, H, W, out_channels or C_in]`` in float32.
    """
    self._check(x)
    dtype = self.dtype
    in_ch_img = x.shape[-1]
    out_ch_img = self.out_channels or in_ch_img
    num_levels = len(self.ch_mult)
    biggan = self.resblock_type == "biggan"

    if self.mixing_logit_init is not None:
      # LSGM: trainable per-channel logit of the mixed score; counted in the reference.
      init = float(self.mixing_logit_init)
      self.param("mixing_logit", lambda _, shape: jnp.full(shape, init, jnp.float32),
                 (self.mixing_logit_channels or in_ch_img,))

    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    temb = self._time_embedding(t).astype(dtype)

    block_cls = layers.ResnetBlockBigGAN if biggan else layers.ResnetBlockDDPM
    attn_cls = layers.AttnBlock
    if self.remat:
      block_cls = nn.remat(block_cls, static_argnums=(3,))
      attn_cls = nn.remat(attn_cls)

    def block_kwargs(out_ch: int | None = None, up: bool = False,
                     down: bool = False) -> dict[str, Any]:
      kw = dict(out_ch=out_ch, dropout=self.dropout, init_scale=self.init_scale,
                skip_rescale=self.skip_rescale, max_groups=self.max_groups, dtype=dtype)
      if biggan:
        kw.update(up=up, down=down, fir=self.fir, fir_kernel=tuple(self.fir_kernel))
      return kw

    def attn_kwargs() -> dict[str, Any]:
      return dict(init_scale=self.init_scale, skip_rescale=self.skip_rescale,
                  max_groups=self.max_groups, dtype=dtype)

    def resblock(name: str, out_ch: int | None = None, up: bool = False,
                 down: bool = False) -> nn.Module:
      return block_cls(**block_kwargs(out_ch, up, down), name=name)

    def attention(name: str) -> nn.Module:
      return attn_cls(**attn_kwargs(), name=name)

    def rescaled_sum(a: Array, b: Array) -> Array:
      return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b

    x = x.astype(dtype)
    input_pyramid = x if self.progressive_input != "none" else None

    # ---- down path
    hs = [layers.conv3x3(self.nf, dtype, name="conv_in")(x)]
    for level in range(num_levels):
      out_ch = self.nf * self.ch_mult[level]
      with_attn = hs[-1].shape[1] in self.attn_resolutions
      # Block i's input is block i-1's output, so only block 0 can differ.
      keys = [hs[-1].shape[-1]] + [out_ch] * (self.num_res_blocks - 1)
      for start, stop in runs(keys, self.scan_blocks):
        if stop - start > 1:
          run = scanned_run(stop - start)(
              block_cls, attn_cls, block_kwargs(out_ch),
              attn_kwargs() if with_attn else None, train, emit=True,
              name=f"down_{level}_scan_{start}")
          h, ys = run(hs[-1], None, temb)
          hs.extend(ys[j] for j in range(stop - start))
          continue
        h = resblock(f"down_{level}_block_{start}", out_ch)(hs[-1], temb, train)
        if with_attn:
          h = attention(f"down_{level}_attn_{start}")(h)
        hs.append(h)
      if level != num_levels - 1:
        if biggan:
          h = resblock(f"down_{level}_resample", down=True)(hs[-1], temb, train)
        else:
          h = layers.Downsample(with_conv=self.resamp_with_conv, fir=self.fir,
                                fir_kernel=self.fir_kernel, dtype=dtype,
                                name=f"down_{level}_resample")(hs[-1])
        if self.progressive_input == "input_skip":
          input_pyramid = layers.Downsample(fir=self.fir, fir_kernel=self.fir_kernel,
                                            dtype=dtype)(input_pyramid)
          h = layers.Combine(self.progressive_combine, dtype=dtype,
                             name=f"down_{level}_combine")(input_pyramid, h)
        elif self.progressive_input == "residual":
          # The input pyramid's own strided conv, widened to the level's channels.
          input_pyramid = layers.Downsample(
              out_ch=h.shape[-1], with_conv=True, fir=self.fir, fir_kernel=self.fir_kernel,
              dtype=dtype, name=f"down_{level}_pyramid")(input_pyramid)
          input_pyramid = rescaled_sum(input_pyramid, h)
          h = input_pyramid
        hs.append(h)

    # ---- middle
    h = hs[-1]
    h = resblock("mid_block_0")(h, temb, train)
    h = attention("mid_attn")(h)
    h = resblock("mid_block_1")(h, temb, train)

    # ---- up path
    pyramid = None
    for level in reversed(range(num_levels)):
      out_ch = self.nf * self.ch_mult[level]
      n_up = self.num_res_blocks + 1
      skips = [hs.pop() for _ in range(n_up)]
      # Block i sees (h, skip i); h has out_ch channels from block 1 on.
      keys = [(h.shape[-1] if i == 0 else out_ch, skips[i].shape) for i in range(n_up)]
      for start, stop in runs(keys, self.scan_blocks):
        if stop - start > 1:
          run = scanned_run(stop - start)(
              block_cls, attn_cls, block_kwargs(out_ch), None, train, emit=False,
              name=f"up_{level}_scan_{start}")
          h, _ = run(h, jnp.stack(skips[start:stop]), temb)
          continue
        h = resblock(f"up_{level}_block_{start}", out_ch)(
            jnp.concatenate([h, skips[start]], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attention(f"up_{level}_attn")(h)

      if self.progressive != "none":
        head = lambda features, scale=1.0: _PyramidHead(  # noqa: E731
            features, scale, self.max_groups, dtype, name=f"up_{level}_pyramid_head")
        if level == num_levels - 1:
          if self.progressive == "output_skip":
            pyramid = head(out_ch_img, self.init_scale)(h)
          else:  # residual
            pyramid = head(h.shape[-1])(h)
        elif self.progressive == "output_skip":
          pyramid = layers.Upsample(fir=self.fir, fir_kernel=self.fir_kernel,
                                    dtype=dtype)(pyramid)
          pyramid = pyramid + head(out_ch_img, self.init_scale)(h)
        else:  # residual: the score_sde (JAX) version, which feeds the sum on as h.
          pyramid = layers.Upsample(out_ch=h.shape[-1], with_conv=True, fir=self.fir,
                                    fir_kernel=self.fir_kernel, dtype=dtype,
                                    name=f"up_{level}_pyramid")(pyramid)
          pyramid = rescaled_sum(pyramid, h)
          h = pyramid

      if level != 0:
        if biggan:
          h = resblock(f"up_{level}_resample", up=True)(h, temb, train)
        else:
          h = layers.Upsample(with_conv=self.resamp_with_conv, fir=self.fir,
                              fir_kernel=self.fir_kernel, dtype=dtype,
                              name=f"up_{level}_resample")(h)
    assert not hs

    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = nn.silu(layers.group_norm(h.shape[-1], dtype, "norm_out", self.max_groups)(h))
      h = layers.conv3x3(out_ch_img, dtype, init_scale=self.init_scale, name="conv_out")(h)
    return h.astype(jnp.float32)
