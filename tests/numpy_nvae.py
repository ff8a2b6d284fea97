"""An independent NumPy (float64) forward pass of a tiny NVAE and its NELBO terms.

Written from the NVAE paper (Vahdat & Kautz 2020, Sec. 3 and Fig. 2: residual cells
``skip + 0.1 * SE(BN-Swish-Conv x 2)``, weight-normalised convolutions, encoder and
decoder combiners, bidirectional top-down posterior) and LSGM (Vahdat et al. 2021,
eq. 6 with the N(0, I) prior), reading only the parameter *names* of
``lsgm_jax.models.nvae``, never its code. Used by tests/test_lsgm_method.py to check
``LSGM.eval_terms`` term by term with fixed posterior noise.

Topology (what ``tiny_two_scale_nelbo`` hard-codes): 8x8 binary image -> 3x3 stem ->
one stride-2 pre-process cell (4x4) -> encoder cell at 4x4, its output kept for the
encoder combiner -> stride-2 cell (2x2) -> encoder cell; decoder: learned 2x2 tensor,
group 0 (2x2, the top scale the SGM prior sees), decoder cell, upsampling cell (4x4),
group 1 (4x4, N(0, I) prior), decoder cell, upsampling post-process cell (8x8), ELU +
3x3 conv -> Bernoulli logits.
"""

from __future__ import annotations

import math

import numpy as np

BN_EPS = 1e-5
WN_EPS = 1e-5
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _swish(x):
  return x * _sigmoid(x)


def _elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _softplus(x):
  return np.logaddexp(0.0, x)


def _conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
  """Zero-padded ('same' for stride 1) NHWC convolution with an HWIO kernel."""
  k = w.shape[0]
  pad = (k - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h_out = (x.shape[1] + 2 * pad - k) // stride + 1
  w_out = (x.shape[2] + 2 * pad - k) // stride + 1
  out = np.zeros((x.shape[0], h_out, w_out, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = xp[:, i:i + stride * (h_out - 1) + 1:stride, j:j + stride * (w_out - 1) + 1:stride]
      out += patch @ w[i, j]
  return out


def wn_conv(p: dict, x: np.ndarray, stride: int = 1) -> np.ndarray:
  """Weight normalisation: W = g V / ||V|| per output channel, g = exp(log_gain)."""
  v = np.asarray(p["kernel"], np.float64)
  norm = np.sqrt(np.sum(v * v, axis=(0, 1, 2)))
  w = np.exp(np.asarray(p["log_gain"], np.float64)) * v / (norm + WN_EPS)
  y = _conv(x, w, stride)
  return y + np.asarray(p["bias"], np.float64) if "bias" in p else y


def _bn(p: dict, stats: dict, x: np.ndarray) -> np.ndarray:
  """BatchNorm in evaluation mode (running statistics)."""
  return ((x - stats["mean"]) / np.sqrt(np.asarray(stats["var"], np.float64) + BN_EPS)
          * p["scale"] + p["bias"])


def _up_nearest(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


def _up_bilinear_align_corners(x):
  """2x bilinear upsampling, corners aligned: output i samples input i (n-1)/(2n-1)."""
  def along(a, axis):
    n = a.shape[axis]
    pos = np.arange(2 * n) * (n - 1) / (2 * n - 1)
    lo = np.minimum(np.floor(pos).astype(int), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, lo, axis) * (1 - frac) + np.take(a, hi, axis) * frac
  return along(along(x, 1), 2)


def _factorized_reduce(p: dict, x: np.ndarray) -> np.ndarray:
  """Stride-2 skip: Swish, four 1x1 stride-2 convs of x shifted by (0,0), (1,1), (0,1),
  (1,0), concatenated on channels."""
  x = _swish(x)
  shifted = (x, x[:, 1:, 1:], x[:, :, 1:], x[:, 1:, :])
  outs = [wn_conv(p[f"conv_{i}"], s, stride=2) for i, s in enumerate(shifted)]
  h = min(o.shape[1] for o in outs)
  w = min(o.shape[2] for o in outs)
  return np.concatenate([o[:, :h, :w] for o in outs], axis=-1)


def _squeeze_excite(p: dict, x: np.ndarray) -> np.ndarray:
  m = x.mean(axis=(1, 2))
  hidden = np.maximum(m @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0.0)
  gate = _sigmoid(hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"])
  return x * gate[:, None, None, :]


def cell(p: dict, stats: dict, x: np.ndarray, kind: str) -> np.ndarray:
  """Residual cell ``skip(x) + 0.1 SE(BN-Swish-Conv(BN-Swish-Conv(x)))``; ``kind``:
  "normal", "down" (stride 2 in the first conv) or "up" (nearest 2x before it)."""
  if kind == "normal":
    skip = x
  elif kind == "down":
    skip = _factorized_reduce(p["skip"], x)
  else:
    skip = wn_conv(p["skip"], _up_bilinear_align_corners(x))
  s = x
  for i in range(2):
    op = p[f"op_{i}"]
    s = _swish(_bn(op["bn"], stats[f"op_{i}"]["bn"], s))
    if kind == "up" and i == 0:
      s = _up_nearest(s)
    s = wn_conv(op["conv"], s, stride=2 if kind == "down" and i == 0 else 1)
  return skip + 0.1 * _squeeze_excite(p["se"], s)


def _posterior(p: dict, feature: np.ndarray):
  out = wn_conv(p, _elu(feature))
  c = out.shape[-1] // 2
  mu, log_sigma = out[..., :c], out[..., c:]
  return 5.0 * np.tanh(mu / 5.0), 5.0 * np.tanh(log_sigma / 5.0)  # soft clamps to (-5, 5)


def tiny_two_scale_nelbo(params: dict, batch_stats: dict, x: np.ndarray,
                         noise: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-example NELBO terms (nats) of the tiny two-scale NVAE with posterior noise
  ``noise`` (group 0 then group 1), and the N(0, I) prior on both groups.

  Returns:
    ``recon`` (-log p(x|z), Bernoulli), ``log_q`` (log q(z|x), both groups),
    ``nll_top`` (-log N(z_top; 0, I)), ``nll_rest`` (-log N(z_1; 0, I)), ``nelbo``
    (their sum), and the latents ``z_top`` / ``z_1``.
  """
  p = {k: v for k, v in params.items()}
  st = batch_stats
  x = np.asarray(x, np.float64)
  s = wn_conv(p["stem"], x)
  s = cell(p["pre_0_0"], st["pre_0_0"], s, "down")
  s = cell(p["enc_0_0_0"], st["enc_0_0_0"], s, "normal")
  combiner_input = s
  s = cell(p["enc_down_0"], st["enc_down_0"], s, "down")
  feature = cell(p["enc_1_0_0"], st["enc_1_0_0"], s, "normal")

  s = np.broadcast_to(np.asarray(p["prior_ftr0"], np.float64), (x.shape[0],) + p["prior_ftr0"].shape)
  latents, log_q = [], np.zeros(x.shape[0])
  for g in range(2):
    if g == 1:  # encoder combiner: encoder feature + 1x1 conv of the decoder state
      feature = combiner_input + wn_conv(p["enc_combiner_0_0"]["conv"], s)
    mu, log_sigma = _posterior(p[f"enc_sampler_{g}"], feature)
    n = np.asarray(noise[g], np.float64)
    z = mu + np.exp(log_sigma) * n
    log_q += np.sum(-0.5 * n ** 2 - HALF_LOG_2PI - log_sigma, axis=(1, 2, 3))
    latents.append(z)
    # Decoder combiner: 1x1 conv of [state, 3x3 conv of z].
    s = wn_conv(p[f"dec_combiner_{g}"]["conv"],
                np.concatenate([s, wn_conv(p[f"eps_conv_{g}"], z)], axis=-1))
    s = cell(p[f"dec_{g}_0"], st[f"dec_{g}_0"], s, "normal")
    if g == 0:
      s = cell(p["dec_up_0"], st["dec_up_0"], s, "up")
  s = cell(p["post_0_0"], st["post_0_0"], s, "up")
  logits = wn_conv(p["image_conditional"], _elu(s))
  t = (x + 1.0) / 2.0  # {-1, 1} -> {0, 1}
  recon = -np.sum(t * logits - _softplus(logits), axis=(1, 2, 3))
  neg_log_normal = lambda z: np.sum(0.5 * z ** 2 + HALF_LOG_2PI, axis=(1, 2, 3))
  nll_top, nll_rest = neg_log_normal(latents[0]), neg_log_normal(latents[1])
  return {"recon": recon, "log_q": log_q, "nll_top": nll_top, "nll_rest": nll_rest,
          "nelbo": recon + log_q + nll_top + nll_rest, "z_top": latents[0],
          "z_1": latents[1]}
