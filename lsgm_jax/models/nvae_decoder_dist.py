"""The NVAE decoder's output distributions (NVAE paper Sec. 4; NVlabs/LSGM ``distributions.py``).

``decoder_log_prob`` / ``decoder_mean`` / ``decoder_sample`` dispatch on
``NVAEConfig.decoder_dist``: the discretised mixture of logistics with the channel
autoregression of PixelCNN++ (``dml``, Salimans et al. 2017), Bernoulli (``bin``) or a
Normal (``normal``), all on the decoder's logits ``[B, H, W, decoder_out_channels]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lsgm_jax.models.nvae import NVAEConfig, normal_log_prob, soft_clamp

Array = jax.Array


def _dml_params(logits: Array, num_mix: int):
  """Split DML logits into mixture logits [B,H,W,M] and per-channel [B,H,W,3,M] params."""
  b, h, w, _ = logits.shape
  logit_probs = logits[..., :num_mix]
  rest = logits[..., num_mix:].reshape(b, h, w, 3, 3 * num_mix)
  means = rest[..., :num_mix]
  log_scales = jnp.maximum(rest[..., num_mix:2 * num_mix], -7.0)
  coeffs = jnp.tanh(rest[..., 2 * num_mix:])
  return logit_probs, means, log_scales, coeffs


def disc_mix_logistic_log_prob(logits: Array, x: Array, num_mix: int = 10,
                               num_bits: int = 8) -> Array:
  """Per-pixel log-probability of RGB ``x`` under the discretized logistic mixture.

  The PixelCNN++ mixture with linear channel dependencies (G depends on R, B on R, G);
  bins of width 2 / (2^bits - 1) on [-1, 1], the edge bins take the tails.

  Args:
    logits: ``[B, H, W, 10 * num_mix]``.
    x: ``[B, H, W, 3]`` on the grid ``-1 + 2k / (2^bits - 1)``.
    num_mix: mixture components.
    num_bits: bits per sub-pixel.

  Returns:
    ``[B, H, W]`` log-probabilities (summed over RGB).
  """
  logit_probs, means, log_scales, coeffs = _dml_params(logits, num_mix)
  max_val = 2.0 ** num_bits - 1
  xs = x[..., None]                                            # B,H,W,3,1
  m0 = means[..., 0, :]
  m1 = means[..., 1, :] + coeffs[..., 0, :] * xs[..., 0, :]
  m2 = means[..., 2, :] + coeffs[..., 1, :] * xs[..., 0, :] + coeffs[..., 2, :] * xs[..., 1, :]
  centered = xs - jnp.stack([m0, m1, m2], axis=-2)            # B,H,W,3,M
  inv_s = jnp.exp(-log_scales)
  plus_in = inv_s * (centered + 1.0 / max_val)
  min_in = inv_s * (centered - 1.0 / max_val)
  log_cdf_plus = plus_in - jax.nn.softplus(plus_in)
  log_one_minus_cdf_min = -jax.nn.softplus(min_in)
  cdf_delta = jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in)
  mid_in = inv_s * centered
  log_pdf_mid = mid_in - log_scales - 2.0 * jax.nn.softplus(mid_in)
  log_mid = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-10)),
                      log_pdf_mid - np.log(max_val / 2))
  lp = jnp.where(xs < -0.999, log_cdf_plus,
                 jnp.where(xs > 0.999, log_one_minus_cdf_min, log_mid))
  lp = jnp.sum(lp, axis=-2) + jax.nn.log_softmax(logit_probs, axis=-1)
  return jax.scipy.special.logsumexp(lp, axis=-1)


def bernoulli_log_prob(logits: Array, x: Array) -> Array:
  """Elementwise Bernoulli log-probability of ``x`` in {-1, 1} (mapped to {0, 1})."""
  t = (x + 1.0) / 2.0
  return t * logits - jax.nn.softplus(logits)


def decoder_log_prob(config: NVAEConfig, logits: Array, x: Array) -> Array:
  """Per-example reconstruction log-likelihood ``log p(x | z)`` (sum over pixels).

  Args:
    config: the model's configuration (decoder_dist, mixture, bits, crop).
    logits: decoder output ``[B, H, W, decoder_out_channels]``.
    x: images in [-1, 1], ``[B, H, W, data_channels]``.

  Returns:
    ``[B]`` log-likelihoods in nats.
  """
  if config.decoder_dist == "dml":
    lp = disc_mix_logistic_log_prob(logits, x, config.num_mixture_dec, config.num_x_bits)[..., None]
  elif config.decoder_dist == "bin":
    lp = bernoulli_log_prob(logits, x)
  else:
    mu, log_sig = jnp.split(soft_clamp(logits, 5.0), 2, axis=-1)
    lp = normal_log_prob(x, mu, log_sig)
  if config.crop_output:  # MNIST is padded 28 -> 32 in the reference
    lp = lp[:, 2:-2, 2:-2]
  return jnp.sum(lp, axis=(1, 2, 3))


def decoder_mean(config: NVAEConfig, logits: Array) -> Array:
  """Mean image in [-1, 1] of the decoder distribution (as the reference's ``mean()``)."""
  if config.decoder_dist == "bin":
    return 2.0 * jax.nn.sigmoid(logits) - 1.0
  if config.decoder_dist == "normal":
    return jnp.split(soft_clamp(logits, 5.0), 2, axis=-1)[0]
  logit_probs, means, _, coeffs = _dml_params(logits, config.num_mixture_dec)
  sel = jax.nn.softmax(logit_probs, axis=-1)[..., None, :]
  return _dml_autoregress(jnp.sum(means * sel, -1), jnp.sum(coeffs * sel, -1))


def _dml_autoregress(x: Array, coeffs: Array) -> Array:
  x0 = jnp.clip(x[..., 0], -1, 1)
  x1 = jnp.clip(x[..., 1] + coeffs[..., 0] * x0, -1, 1)
  x2 = jnp.clip(x[..., 2] + coeffs[..., 1] * x0 + coeffs[..., 2] * x1, -1, 1)
  return jnp.stack([x0, x1, x2], axis=-1)


def decoder_sample(config: NVAEConfig, logits: Array, rng: Array, temperature: float = 1.0) -> Array:
  """One sample in [-1, 1] from the decoder distribution."""
  if config.decoder_dist == "bin":
    return 2.0 * jax.random.bernoulli(rng, jax.nn.sigmoid(logits)).astype(logits.dtype) - 1.0
  if config.decoder_dist == "normal":
    mu, log_sig = jnp.split(soft_clamp(logits, 5.0), 2, axis=-1)
    return mu + temperature * jnp.exp(log_sig) * jax.random.normal(rng, mu.shape, mu.dtype)
  k_sel, k_u = jax.random.split(rng)
  logit_probs, means, log_scales, coeffs = _dml_params(logits, config.num_mixture_dec)
  comp = jax.random.categorical(k_sel, logit_probs / temperature, axis=-1)
  sel = jax.nn.one_hot(comp, config.num_mixture_dec, dtype=logits.dtype)[..., None, :]
  mean = jnp.sum(means * sel, -1)
  log_s = jnp.sum(log_scales * sel, -1)
  u = jax.random.uniform(k_u, mean.shape, mean.dtype, 1e-5, 1.0 - 1e-5)
  x = mean + jnp.exp(log_s) * temperature * (jnp.log(u) - jnp.log1p(-u))
  return _dml_autoregress(x, jnp.sum(coeffs * sel, -1))
