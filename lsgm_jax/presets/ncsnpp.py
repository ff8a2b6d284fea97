"""NCSN++ configurations: CLD-SGM's CIFAR-10 model, LSGM's latent score models.

Each returns keyword arguments for ``lsgm_jax.models.ncsnpp.NCSNpp``; the counts are
pinned in tests/test_models.py.
"""

from __future__ import annotations

from typing import Any


def cld_cifar10_config(**overrides: Any) -> dict[str, Any]:
  """NCSNpp fields of CLD-SGM's CIFAR-10 model (107,593,859 trainable parameters).

  nv-tlabs/CLD-SGM configs/default_cifar10.txt + specific_cifar10.txt: nf 128, ch_mult
  1,2,2,2 at 32/16/8/4, 8 res blocks, attention at 16, BigGAN blocks, FIR 1,3,3,1, skip
  rescale, residual progressive input, no progressive output, init scale 0, dropout 0.1,
  Fourier scale 16 on log t; input (x, v) = 6 channels, output the 3-channel velocity
  score (CLD paper Sec. 3.2: the network predicts only the v-score).

  Args:
    **overrides: fields to change (e.g. ``dtype``, ``remat``).

  Returns:
    Keyword arguments for ``NCSNpp``.
  """
  cfg = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,),
             dropout=0.1, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
             resblock_type="biggan", progressive="none", progressive_input="residual",
             progressive_combine="sum", init_scale=0.0, embedding_type="fourier",
             fourier_scale=16.0, fourier_log_t=True, in_channels=6, out_channels=3)
  cfg.update(overrides)
  return cfg


def lsgm_config(num_channels: int, nf: int, num_levels: int, fir: bool,
                mixing_logit_init: float | None, **overrides: Any) -> dict[str, Any]:
  """NCSNpp fields of LSGM's latent score model (NVlabs/LSGM score_sde/ncsnpp.py).

  All channel multipliers 1; attention fixed at 16; 8 res blocks; BigGAN blocks, skip
  rescale, init scale 0; positional embedding of ``1000 t`` with 128 features, time
  width 512; no input/output pyramid; dropout 0.2 (README commands).

  Args:
    num_channels: total latent channels (input = output).
    nf: ``--num_channels_dae``.
    num_levels: ``--num_scales_dae``.
    fir: ``--fir``.
    mixing_logit_init: ``--mixing_logit_init`` (None: no mixing logit).
    **overrides: fields to change.

  Returns:
    Keyword arguments for ``NCSNpp``.
  """
  cfg = dict(nf=nf, ch_mult=(1,) * num_levels, num_res_blocks=8, attn_resolutions=(16,),
             dropout=0.2, fir=fir, skip_rescale=True, resblock_type="biggan",
             progressive="none", progressive_input="none", init_scale=0.0,
             embedding_type="positional", time_scale=1000.0, embedding_dim=128,
             in_channels=num_channels, out_channels=num_channels,
             mixing_logit_init=mixing_logit_init)
  cfg.update(overrides)
  return cfg


def lsgm_cifar10_config(**overrides: Any) -> dict[str, Any]:
  """LSGM CIFAR-10 score model: 180 latent channels at 16x16, nf 512, 3 levels, FIR,
  mixing logit init -3 (375,561,064 trainable parameters with the logit)."""
  return lsgm_config(180, 512, 3, True, -3.0, **overrides)


def lsgm_mnist_config(**overrides: Any) -> dict[str, Any]:
  """LSGM MNIST score model: 40 latent channels at 8x8, nf 256, 2 levels, no FIR,
  mixing logit init -6 (63,774,544 trainable parameters with the logit)."""
  return lsgm_config(40, 256, 2, False, -6.0, **overrides)
