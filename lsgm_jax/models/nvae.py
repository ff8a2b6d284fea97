"""NVAE as used by LSGM (Vahdat & Kautz 2020; LSGM, Vahdat et al. 2021).

One module, :class:`NVAE`, configured by the frozen dataclass :class:`NVAEConfig`. The
paper models are configurations in ``lsgm_jax.presets.nvae``
(``nvae_cifar10_config(variant)``, ``nvae_mnist_config()``,
``nvae_celebahq256_config(variant)``, derived from the ``train_vae.py`` command lines of
the NVlabs/LSGM README); their trainable-parameter counts are pinned in
tests/test_nvae.py:

  * CIFAR-10 vae1 ("balanced") / vae2 ("best FID"): 100,867,740.
  * CIFAR-10 vae3 ("best NLL", two IAF flow pairs per group): 130,622,772.
  * MNIST (Bernoulli decoder, MBConv decoder cells): 3,005,822.
  * CelebA-HQ-256 (``nvae_celebahq256_config``, with the input pyramid): quantitative
    51,296,572, qualitative 17,789,540.

Layout (NHWC): 3x3 stem; pre-process blocks of residual cells ending in a stride-2 cell;
the encoder tower (``num_cell_per_cond_enc`` cells per latent group, an encoder combiner
after each group but the last, a stride-2 cell between latent scales, followed with
``progressive_input_vae="input_skip"`` by the input-pyramid combiner); then the decoder
starts from a learned tensor ``prior_ftr0`` and, top group first, forms the posterior
``q(eps_g | x, eps_<g)`` from the matching encoder feature (combined with the decoder
state), samples ``eps_g``, optionally passes it through IAF flows, maps it with a 3x3
conv and merges it into the decoder state (decoder combiner), followed by
``num_cell_per_cond_dec`` cells and an upsampling cell between scales; post-process
blocks start with an upsampling cell; ELU + 3x3 conv give the decoder distribution's
parameters.

In LSGM the VAE's own prior over ``eps`` is N(0, I) (the score model replaces it in
stage 2), so ``log_p`` / ``kl`` below are with respect to N(0, I) unless ``res_dist``
turns on NVAE's learned conditional prior with residual posteriors.

Regularisers (NVAE paper, Sec. 3.2): run ``apply`` with ``mutable=MUTABLE_COLLECTIONS``
in training (carry ``model_state(variables)`` between steps); ``spectral_norm_penalty``
then sums the power-iteration estimates of every convolution's largest singular value
(``u`` / ``v`` persist in the ``spectral`` collection), and ``batchnorm_penalty(params)``
sums ``max |scale|`` of every BatchNorm.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lsgm_jax.models import nvae_layers as L

Array = jax.Array

DECODER_DISTS = ("dml", "bin", "normal")
PROGRESSIVE_INPUTS = ("none", "input_skip")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class NVAEConfig:
  """Architecture of an LSGM NVAE (names follow the reference's ``train_vae.py`` flags).

  Attributes:
    image_size: input height / width (MNIST is padded to 32 in the reference).
    data_channels: image channels (3 for CIFAR-10, 1 for binary digits).
    num_channels_enc / num_channels_dec: base channel counts.
    num_preprocess_blocks / num_preprocess_cells: encoder stem blocks (each ends with a
      stride-2 cell) and cells per block.
    num_postprocess_blocks / num_postprocess_cells: decoder tail blocks (each starts
      with an upsampling cell); must equal the pre-process block count.
    num_latent_scales / num_groups_per_scale / num_latent_per_group: the latent
      hierarchy.
    num_cell_per_cond_enc / num_cell_per_cond_dec: residual cells per latent group.
    ada_groups / min_groups_per_scale: halve the group count at every coarser scale
      (not below the minimum), as NVAE's ``--ada_groups``; LSGM keeps it constant.
    channel_mult: one multiplier per spatial scale (pre-process blocks + latent scales).
    arch_instance: cell recipe, ``res_bnswish`` or ``res_mbconv`` (nvae_layers.ARCH_CELLS).
    use_se: squeeze-and-excitation in every cell.
    res_dist: NVAE's learned conditional prior (1x1 conv per group after the first) with
      residual posteriors; LSGM itself uses N(0, I) (False).
    num_nf: IAF flow pairs per latent group.
    decoder_dist: "dml" (discretized logistic mixture, RGB), "bin" (Bernoulli) or
      "normal".
    num_mixture_dec: logistic mixture components for "dml".
    num_x_bits: bits per sub-pixel for "dml".
    log_sig_q_scale: soft clamp of log sigma_q to (-s, s).
    progressive_input_vae: "none", or "input_skip" for the reference's encoder input
      pyramid (``--progressive_input_vae``; its CelebA-HQ-256 models): the pre-processed
      features are kept as a pyramid level; after each encoder down cell a stride-2
      BN-Swish-conv takes the pyramid one scale down and adds it to the encoder state.
    crop_output: crop the 32x32 output to the central 28x28 for the likelihood (MNIST).
    bn_axis_name: mapped axis for synchronised BatchNorm, or None.
  """

  image_size: int = 32
  data_channels: int = 3
  num_channels_enc: int = 128
  num_channels_dec: int = 128
  num_preprocess_blocks: int = 1
  num_preprocess_cells: int = 2
  num_postprocess_blocks: int = 1
  num_postprocess_cells: int = 2
  num_latent_scales: int = 1
  num_groups_per_scale: int = 20
  num_latent_per_group: int = 9
  num_cell_per_cond_enc: int = 2
  num_cell_per_cond_dec: int = 2
  ada_groups: bool = False
  min_groups_per_scale: int = 1
  channel_mult: Tuple[int, ...] = (1, 2)
  arch_instance: str = "res_bnswish"
  use_se: bool = True
  res_dist: bool = False
  num_nf: int = 0
  decoder_dist: str = "dml"
  num_mixture_dec: int = 10
  num_x_bits: int = 8
  log_sig_q_scale: float = 5.0
  progressive_input_vae: str = "none"
  crop_output: bool = False
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
    total = self.num_preprocess_blocks + self.num_latent_scales
    if len(self.channel_mult) != total:
      raise ValueError(f"channel_mult needs num_preprocess_blocks + num_latent_scales = {total} "
                       f"entries, got {self.channel_mult}")
    if self.num_preprocess_blocks != self.num_postprocess_blocks:
      raise ValueError("num_preprocess_blocks must equal num_postprocess_blocks")
    if self.decoder_dist not in DECODER_DISTS:
      raise ValueError(f"decoder_dist must be one of {DECODER_DISTS}, got {self.decoder_dist!r}")
    if self.decoder_dist == "dml" and self.data_channels != 3:
      raise ValueError("decoder_dist 'dml' is the RGB logistic mixture (data_channels=3)")
    if self.progressive_input_vae not in PROGRESSIVE_INPUTS:
      raise ValueError(f"progressive_input_vae must be one of {PROGRESSIVE_INPUTS}, got "
                       f"{self.progressive_input_vae!r}")
    if self.arch_instance not in L.ARCH_CELLS:
      raise ValueError(f"arch_instance must be one of {tuple(L.ARCH_CELLS)}")
    if self.image_size % (2 ** (total - 1)):
      raise ValueError(f"image_size {self.image_size} is not divisible by 2^{total - 1}")
    for name in ("num_preprocess_cells", "num_postprocess_cells", "num_groups_per_scale",
                 "num_latent_per_group", "num_cell_per_cond_enc", "num_cell_per_cond_dec"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1")

  @property
  def groups_per_scale(self) -> Tuple[int, ...]:
    """Latent groups per scale, finest scale first."""
    return groups_per_scale(self.num_latent_scales, self.num_groups_per_scale,
                            self.ada_groups, self.min_groups_per_scale)

  @property
  def num_groups(self) -> int:
    return sum(self.groups_per_scale)

  @property
  def decoder_out_channels(self) -> int:
    if self.decoder_dist == "dml":
      return 10 * self.num_mixture_dec  # M logits + 3 x (means, log scales, coeffs) x M
    if self.decoder_dist == "bin":
      return self.data_channels
    return 2 * self.data_channels

  def latent_shapes(self) -> Tuple[Tuple[int, int, int], ...]:
    """(H, W, C) of every group's ``eps`` in decoder order (top, coarsest, first)."""
    shapes = []
    top = self.image_size // 2 ** (self.num_preprocess_blocks + self.num_latent_scales - 1)
    gps = self.groups_per_scale
    for s in range(self.num_latent_scales):
      size = top * 2 ** s
      shapes += [(size, size, self.num_latent_per_group)] * gps[self.num_latent_scales - s - 1]
    return tuple(shapes)


def groups_per_scale(num_scales: int, num_groups: int, adaptive: bool = False,
                     minimum: int = 1) -> Tuple[int, ...]:
  """Groups per scale (finest first); ``adaptive`` halves the count per coarser scale."""
  out, n = [], num_groups
  for _ in range(num_scales):
    out.append(n)
    if adaptive:
      n = max(minimum, n // 2)
  return tuple(out)


# ----------------------------------------------------------------------------- outputs

@flax.struct.dataclass
class NVAEOutput:
  """What one forward pass returns (lists are per latent group, decoder order).

  Attributes:
    logits: decoder distribution parameters, ``[B, H, W, decoder_out_channels]``.
    eps: sampled latents after the flows (what the prior / score model sees).
    mu_q / log_sigma_q: the posterior normal's parameters (before the flows).
    mu_p / log_sigma_p: the prior's parameters (zeros for N(0, I)).
    log_q: per-element ``log q(eps)`` (normal log-density minus flow log-dets).
    log_p: per-element ``log p(eps)`` under the prior.
    kl_per_group: ``[B, G]`` KL per group: analytic KL(N_q || N_p) summed over elements
      when there are no flows, else the one-sample estimate ``sum(log_q - log_p)``.
  """

  logits: Array
  eps: Tuple[Array, ...]
  mu_q: Tuple[Array, ...]
  log_sigma_q: Tuple[Array, ...]
  mu_p: Tuple[Array, ...]
  log_sigma_p: Tuple[Array, ...]
  log_q: Tuple[Array, ...]
  log_p: Tuple[Array, ...]
  kl_per_group: Array


def soft_clamp(x: Array, a: float) -> Array:
  """Differentiable clamp of ``x`` into (-a, a): ``a * tanh(x / a)``."""
  return a * jnp.tanh(x / a)


def normal_log_prob(x: Array, mu: Array, log_sigma: Array) -> Array:
  """Elementwise log N(x; mu, exp(log_sigma)^2)."""
  z = (x - mu) * jnp.exp(-log_sigma)
  return -0.5 * z * z - _HALF_LOG_2PI - log_sigma


def normal_kl(mu_q: Array, log_sigma_q: Array, mu_p: Array, log_sigma_p: Array) -> Array:
  """Elementwise KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) >= 0."""
  t1 = (mu_q - mu_p) * jnp.exp(-log_sigma_p)
  t2 = jnp.exp(log_sigma_q - log_sigma_p)
  return 0.5 * (t1 * t1 + t2 * t2) - 0.5 - (log_sigma_q - log_sigma_p)


# ----------------------------------------------------------------------------- model

class NVAE(nn.Module):
  """LSGM's NVAE. ``__call__(x, train)`` encodes and decodes; ``sample`` decodes from
  the prior (or from given top-group latents).

  Randomness: the ``sample`` rng stream (posterior / prior draws). Images are NHWC in
  [-1, 1].
  """

  config: NVAEConfig

  def setup(self):
    cfg = self.config
    cells = L.ARCH_CELLS[cfg.arch_instance]
    mult = cfg.channel_mult
    cenc = lambda i: int(cfg.num_channels_enc * mult[i])
    cdec = lambda i: int(cfg.num_channels_dec * mult[i])

    def cell(features, cell_type, name):
      return L.Cell(features, cell_type, cells[cell_type], cfg.use_se, cfg.bn_axis_name, name=name)

    top = cfg.image_size // 2 ** (cfg.num_preprocess_blocks + cfg.num_latent_scales - 1)
    self.prior_ftr0 = self.param(
        "prior_ftr0", lambda k, s: jax.random.uniform(k, s), (top, top, cdec(len(mult) - 1)))
    self.stem = L.WNConv(cfg.num_channels_enc, 3, name="stem")

    si = 0
    pre = []
    for b in range(cfg.num_preprocess_blocks):
      for c in range(cfg.num_preprocess_cells):
        if c == cfg.num_preprocess_cells - 1:
          pre.append(cell(cenc(si + 1), "down_pre", f"pre_{b}_{c}"))
          si += 1
        else:
          pre.append(cell(cenc(si), "normal_pre", f"pre_{b}_{c}"))
    self.pre_process = pre

    # Encoder tower as a plan of ("cell", module) / ("combiner", module) /
    # ("input_skip", module) steps (nvae.py init_encoder_tower).
    gps = cfg.groups_per_scale
    enc = []
    for s in range(cfg.num_latent_scales):
      for g in range(gps[s]):
        for c in range(cfg.num_cell_per_cond_enc):
          enc.append(("cell", cell(cenc(si), "normal_enc", f"enc_{s}_{g}_{c}")))
        if not (s == cfg.num_latent_scales - 1 and g == gps[s] - 1):
          enc.append(("combiner", L.EncCombiner(cenc(si), name=f"enc_combiner_{s}_{g}")))
      if s < cfg.num_latent_scales - 1:
        enc.append(("cell", cell(cenc(si + 1), "down_enc", f"enc_down_{s}")))
        if cfg.progressive_input_vae == "input_skip":
          enc.append(("input_skip", L.InputSkipCombiner(cenc(si + 1), cfg.bn_axis_name,
                                                        name=f"enc_input_skip_{s}")))
        si += 1
    self.enc_kinds = tuple(k for k, _ in enc)
    self.enc_tower = [m for _, m in enc]

    nlat = cfg.num_latent_per_group
    enc_sampler, dec_sampler, nf_cells, eps_conv, dec = [], [], [], [], []
    idx = 0
    for s in range(cfg.num_latent_scales):
      for g in range(gps[cfg.num_latent_scales - s - 1]):
        enc_sampler.append(L.WNConv(2 * nlat, 3, name=f"enc_sampler_{idx}"))
        if cfg.res_dist and idx > 0:
          dec_sampler.append(L.WNConv(2 * nlat, 1, name=f"dec_sampler_{idx}"))
        nf_cells.append([L.PairedCellAR(name=f"nf_{idx}_{n}") for n in range(cfg.num_nf)])
        eps_conv.append(L.WNConv(nlat, 3, name=f"eps_conv_{idx}"))
        dec.append(("combiner", L.DecCombiner(cdec(si), name=f"dec_combiner_{idx}")))
        for c in range(cfg.num_cell_per_cond_dec):
          dec.append(("cell", cell(cdec(si), "normal_dec", f"dec_{idx}_{c}")))
        idx += 1
      if s < cfg.num_latent_scales - 1:
        dec.append(("cell", cell(cdec(si - 1), "up_dec", f"dec_up_{s}")))
        si -= 1
    self.enc_sampler = enc_sampler
    self.dec_sampler = dec_sampler
    self.nf_cells = nf_cells
    self.eps_conv = eps_conv
    self.dec_kinds = tuple(k for k, _ in dec)
    self.dec_tower = [m for _, m in dec]

    post = []
    for b in range(cfg.num_postprocess_blocks):
      for c in range(cfg.num_postprocess_cells):
        if c == 0:
          post.append(cell(cdec(si - 1), "up_post", f"post_{b}_{c}"))
          si -= 1
        else:
          post.append(cell(cdec(si), "normal_post", f"post_{b}_{c}"))
    self.post_process = post
    self.image_conditional = L.WNConv(cfg.decoder_out_channels, 3, name="image_conditional")

  # --------------------------------------------------------------------------- helpers

  def _prior(self, idx: int, s: Array) -> Tuple[Array, Array]:
    """Prior parameters of group ``idx`` given the decoder state ``s``."""
    shape = s.shape[:-1] + (self.config.num_latent_per_group,)
    if self.config.res_dist and idx > 0:
      mu, log_sig = jnp.split(self.dec_sampler[idx - 1](nn.elu(s)), 2, axis=-1)
      return soft_clamp(mu, 5.0), soft_clamp(log_sig, 5.0)
    return jnp.zeros(shape, s.dtype), jnp.zeros(shape, s.dtype)

  def _head(self, s: Array, train: bool) -> Array:
    for c in self.post_process:
      s = c(s, train)
    return self.image_conditional(nn.elu(s))

  def _initial_state(self, batch: int) -> Array:
    return jnp.broadcast_to(self.prior_ftr0[None], (batch,) + self.prior_ftr0.shape)

  # --------------------------------------------------------------------------- forward

  def __call__(self, x: Array, train: bool = True) -> NVAEOutput:
    """Encode ``x`` ([B, H, W, C] in [-1, 1]), sample every group, decode.

    Args:
      x: images.
      train: BatchNorm uses batch statistics (and updates ``batch_stats``) when True.

    Returns:
      An :class:`NVAEOutput`.
    """
    cfg = self.config
    s = self.stem(x)
    for c in self.pre_process:
      s = c(s, train)
    pyramid = s  # the input pyramid's first level (used by "input_skip" steps only)
    comb_cells, comb_inputs = [], []
    for kind, m in zip(self.enc_kinds, self.enc_tower):
      if kind == "combiner":
        comb_cells.append(m)
        comb_inputs.append(s)
      elif kind == "input_skip":
        s, pyramid = m(s, pyramid, train)
      else:
        s = m(s, train)
    comb_cells.reverse()
    comb_inputs.reverse()

    ftr_enc = s
    s = self._initial_state(x.shape[0])
    out = {k: [] for k in ("eps", "mu_q", "log_sigma_q", "mu_p", "log_sigma_p", "log_q",
                           "log_p", "kl")}
    idx = 0
    for kind, m in zip(self.dec_kinds, self.dec_tower):
      if kind != "combiner":
        s = m(s, train)
        continue
      if idx > 0:
        ftr_enc = comb_cells[idx - 1](comb_inputs[idx - 1], s)
      mu_q, log_sig_q = jnp.split(self.enc_sampler[idx](nn.elu(ftr_enc)), 2, axis=-1)
      mu_q = soft_clamp(mu_q, 5.0)
      log_sig_q = soft_clamp(log_sig_q, cfg.log_sig_q_scale)
      mu_p, log_sig_p = self._prior(idx, s)
      if cfg.res_dist and idx > 0:  # NVAE residual normal: q relative to p
        mu_q, log_sig_q = mu_p + mu_q, log_sig_p + log_sig_q
      noise = jax.random.normal(self.make_rng("sample"), mu_q.shape, mu_q.dtype)
      eps = mu_q + jnp.exp(log_sig_q) * noise
      log_q = normal_log_prob(eps, mu_q, log_sig_q)
      for flow in self.nf_cells[idx]:
        eps, log_det = flow(eps)
        log_q = log_q - log_det
      log_p = normal_log_prob(eps, mu_p, log_sig_p)
      if cfg.num_nf == 0:
        kl = jnp.sum(normal_kl(mu_q, log_sig_q, mu_p, log_sig_p), axis=(1, 2, 3))
      else:
        kl = jnp.sum(log_q - log_p, axis=(1, 2, 3))
      for k, v in (("eps", eps), ("mu_q", mu_q), ("log_sigma_q", log_sig_q), ("mu_p", mu_p),
                   ("log_sigma_p", log_sig_p), ("log_q", log_q), ("log_p", log_p), ("kl", kl)):
        out[k].append(v)
      s = m(s, self.eps_conv[idx](eps))
      idx += 1

    logits = self._head(s, train)
    kl_all = jnp.stack(out.pop("kl"), axis=1)
    return NVAEOutput(logits=logits, kl_per_group=kl_all,
                      **{k: tuple(v) for k, v in out.items()})

  def sample(self, num_samples: int, temperature: float = 1.0,
             eps_z: Optional[Sequence[Array]] = None, train: bool = False) -> Array:
    """Decode from the prior: returns the decoder distribution's parameters.

    Args:
      num_samples: batch size.
      temperature: scales the prior's standard deviation.
      eps_z: optional latents for the first ``len(eps_z)`` groups (decoder order), e.g.
        drawn by the score model in LSGM.
      train: BatchNorm mode (the reference samples in eval mode).

    Returns:
      logits ``[num_samples, H, W, decoder_out_channels]``; see ``decoder_mean`` /
      ``decoder_sample``.
    """
    eps_z = list(eps_z) if eps_z is not None else []
    s = self._initial_state(num_samples)
    idx = 0
    for kind, m in zip(self.dec_kinds, self.dec_tower):
      if kind != "combiner":
        s = m(s, train)
        continue
      if idx < len(eps_z):
        eps = eps_z[idx]
      else:
        mu_p, log_sig_p = self._prior(idx, s)
        noise = jax.random.normal(self.make_rng("sample"), mu_p.shape, mu_p.dtype)
        eps = mu_p + temperature * jnp.exp(log_sig_p) * noise
      s = m(s, self.eps_conv[idx](eps))
      idx += 1
    return self._head(s, train)


# ----------------------------------------------------------------------------- penalties

MUTABLE_COLLECTIONS = ("batch_stats", "spectral", "losses")


def model_state(variables: Any) -> dict:
  """The non-parameter state to carry between steps: ``batch_stats`` and ``spectral``.

  ``losses`` (sown per call) is dropped on purpose: passed back in, ``sow`` would append
  to it and the spectral penalty would be counted twice.
  """
  return {k: variables[k] for k in ("batch_stats", "spectral") if k in variables}


def spectral_norm_penalty(losses: Any) -> Array:
  """Sum of the spectral-norm estimates sown by every conv (the ``losses`` collection).

  Args:
    losses: the mutated ``losses`` collection (or a dict containing it) returned by
      ``apply(..., mutable=["batch_stats", "spectral", "losses"])``.

  Returns:
    Scalar ``sum_l sigma_max(W_l)`` (gradients flow to the weights only).
  """
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_flatten_with_path(losses)[0]:
    if any(getattr(p, "key", None) == "spectral" for p in path):
      total = total + jnp.sum(leaf)
  return total


def batchnorm_penalty(params: Any) -> Array:
  """Sum over BatchNorm layers of ``max |scale|`` (the reference's BN weight decay).

  A scale with leading axes (a scanned run of blocks, parameters stacked on axis 0) is
  one layer per leading index, as in the unrolled network.
  """
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if getattr(path[-1], "key", None) == "scale":
      total = total + jnp.sum(jnp.max(jnp.abs(leaf), axis=-1) if leaf.ndim else jnp.abs(leaf))
  return total


# ----------------------------------------------------------------------------- decoder
