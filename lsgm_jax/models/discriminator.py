"""Patch-based GAN discriminator of the first stage (latent VAE paper, §3.1: "patch-based
adversarial losses", Esser et al., 2021).

The PatchGAN ``NLayerDiscriminator`` of taming-transformers, which LDM's autoencoder loss
uses: 4x4 convolutions, LeakyReLU(0.2), BatchNorm after every convolution but the first
and the last, ``n_layers`` stride-2 stages then two stride-1 ones, one logit per patch.
Initialised as taming's ``weights_init``: conv weights N(0, 0.02), BatchNorm scale
N(1, 0.02) and bias 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.2


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class NLayerDiscriminator(nn.Module):
  """Images ``[B, H, W, C]`` -> patch logits ``[B, h, w, 1]``.

  With the defaults (ndf 64, 3 layers, 3 input channels) it has 2,765,633 parameters
  (taming's layer shapes, counted by hand: convs 3,136 + 131,072 + 524,288 + 2,097,152
  + 8,193, BatchNorms 256 + 512 + 1,024). Each stage shrinks a side as (s + 2 - 4) / stride + 1, so 8x8 inputs need
  ``n_layers`` = 1 (8 -> 4 -> 3 -> 2).
  """

  ndf: int = 64
  n_layers: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    conv_init = nn.initializers.normal(0.02)

    def conv(features, stride, use_bias, name):
      return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                     use_bias=use_bias, kernel_init=conv_init, name=name)

    def norm(name):
      # torch BatchNorm2d: momentum 0.1 of the new statistic (flax: 0.9 of the old).
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          scale_init=_scale_init, name=name)

    h = nn.leaky_relu(conv(self.ndf, 2, True, "conv_0")(x), LEAKY_SLOPE)
    for n in range(1, self.n_layers + 1):
      stride = 2 if n < self.n_layers else 1
      features = self.ndf * min(2 ** n, 8)
      h = conv(features, stride, False, f"conv_{n}")(h)
      h = nn.leaky_relu(norm(f"norm_{n}")(h), LEAKY_SLOPE)
    return conv(1, 1, True, "conv_out")(h)
