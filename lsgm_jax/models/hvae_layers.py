"""Layers of the latent VAE's deep hierarchical VAE (latent VAE paper, appendix B).

Convolutions with the reference's scaled Glorot init, the spectral-norm-penalised
convolution, the residual inverted-bottleneck block, self-attention and resampling, as
in ericl122333/latent-vae-jax ``nn.py``. ``lsgm_jax.models.hvae`` assembles them.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Collection holding the power-iteration vectors of the spectral-norm penalty.
SPECTRAL_COLLECTION = "spectral"


def scaled_init(scale: float) -> nn.initializers.Initializer:
  """Glorot-uniform scaled by ``scale`` (the reference's output-layer damping)."""
  return nn.initializers.variance_scaling(scale ** 2, "fan_avg", "uniform")


def scaled_conv(features: int, kernel: int, scale: float = 1.0, use_bias: bool = True,
                name: str | None = None) -> nn.Conv:
  """A k x k SAME convolution with ``scaled_init(scale)`` kernels."""
  return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                 kernel_init=scaled_init(scale), name=name)


class SpectralConv(nn.Module):
  """Convolution that also returns ``weight * sigma_max(kernel)`` (spectral penalty).

  sigma_max is estimated by one power-iteration step per call on the kernel reshaped
  to ``[k*k*C_in, C_out]``; the right singular vector is kept in the ``spectral``
  collection and updated only when that collection is mutable. The vectors are held
  constant in the gradient (Yoshida & Miyato, 2017).
  """

  features: int
  kernel_size: int
  scale: float = 1.0
  weight: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Args: x ``[B,H,W,C]``. Returns (``[B,H,W,features]``, scalar penalty)."""
    k = self.kernel_size
    kernel = self.param("kernel", scaled_init(self.scale),
                        (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    out = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias

    # A fixed start vector (no RNG): the power iteration moves it on every update.
    u_var = self.variable(SPECTRAL_COLLECTION, "u", lambda: jnp.full(
        (self.features,), 1.0 / math.sqrt(self.features), jnp.float32))
    w = kernel.reshape(-1, self.features)
    u = jax.lax.stop_gradient(u_var.value)
    v = w @ u
    v = jax.lax.stop_gradient(v / (jnp.linalg.norm(v) + 1e-12))
    u_new = w.T @ v
    u_new = jax.lax.stop_gradient(u_new / (jnp.linalg.norm(u_new) + 1e-12))
    sigma = v @ w @ u_new
    if self.is_mutable_collection(SPECTRAL_COLLECTION) and not self.is_initializing():
      u_var.value = u_new
    return out, self.weight * sigma


class Block(nn.Module):
  """Residual inverted-bottleneck block (latent VAE paper, appendix B).

  swish -> conv k x k (``features``) -> swish -> conv k x k -> swish -> 1x1 expand by
  ``ffn_ratio`` -> swish -> 1x1 to ``out_features``; k = 3, or 1 for 1x1 levels. With
  ``ffn_ratio == 0`` it is the two-conv block (conv k x k, then a 3x3 output conv).
  With a ``label`` embedding, a Dense projection of it is added to the input. With
  ``spectral_weight`` set, the output conv carries the spectral penalty and the block
  has no residual (posterior / prior heads); otherwise the residual is added when the
  widths agree.
  """

  features: int
  out_features: int
  ffn_ratio: int
  spatial: bool = True
  out_scale: float = 1.0
  spectral_weight: float | None = None

  @nn.compact
  def __call__(self, inputs: Array, label: Array | None = None) -> tuple[Array, Array]:
    """Args: inputs ``[B,H,W,C]``, label ``[B,E]`` or None.

    Returns: (``[B,H,W,out_features]``, scalar spectral penalty (0 when unset)).
    """
    x = inputs
    if label is not None:
      x = x + nn.Dense(x.shape[-1], name="label_proj")(label)[:, None, None, :]
    k = 3 if self.spatial else 1
    x = scaled_conv(self.features, k, name="conv1")(nn.swish(x))
    if self.ffn_ratio:
      x = scaled_conv(self.features, k, name="conv2")(nn.swish(x))
      x = scaled_conv(self.features * self.ffn_ratio, 1, name="ffn_in")(nn.swish(x))
      out_kernel = 1
    else:
      out_kernel = 3
    if self.spectral_weight is not None:
      return SpectralConv(self.out_features, out_kernel, self.out_scale,
                          self.spectral_weight, name="out")(nn.swish(x))
    x = scaled_conv(self.out_features, out_kernel, self.out_scale, name="out")(nn.swish(x))
    if self.out_features == inputs.shape[-1]:
      x = x + inputs
    return x, jnp.zeros((), x.dtype)


class Attention(nn.Module):
  """Residual multi-head self-attention over the H*W positions, zero-initialised output.

  NOTE: the reference (latent-vae-jax ``nn.py`` ``AttentionLayer``) computes the
  multi-head attention and then overwrites its result with a reshape of q, so its
  multi-head layers output x plus a projection of q. Here the attention output is used,
  as intended; the parameters (and their count) are the same. ``reference_defect=True``
  reproduces the reference's output (for its released weights; one head is unaffected). With one head the query
  and key projections are fused into one matrix and the value / output projections
  likewise, as in the reference.
  """

  features: int
  num_heads: int
  reference_defect: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x ``[B,H,W,C]``. Returns the same shape."""
    b, h, w, c = x.shape
    seq = x.reshape(b, h * w, c)
    if self.num_heads == 1:
      q = nn.Dense(c, name="qk")(seq)
      logits = jnp.einsum("bqc,bkc->bqk", q, seq) / math.sqrt(c)
      out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1), seq)
    else:
      d = c // self.num_heads
      qkv = nn.Dense(3 * c, name="qkv")(seq)
      q, k, v = (t.reshape(b, h * w, self.num_heads, d) for t in jnp.split(qkv, 3, -1))
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
      out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
      out = out.reshape(b, h * w, c)
      if self.reference_defect:
        out = q.reshape(b, h * w, c)
    out = nn.Dense(c, kernel_init=nn.initializers.zeros, name="out")(out)
    return (seq + out).reshape(b, h, w, c)


class Resample(nn.Module):
  """Average-pool down or nearest up by ``factor``, then a 1x1 conv if the width changes."""

  features: int
  factor: int
  up: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    f = self.factor
    if self.up:
      x = jax.image.resize(x, (b, h * f, w * f, c), method="nearest")
    else:
      x = nn.avg_pool(x, (f, f), (f, f))
    if self.features != c:
      x = scaled_conv(self.features, 1, name="proj")(x)
    return x
