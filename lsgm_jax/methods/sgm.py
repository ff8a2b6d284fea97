"""Pixel-space score-based generative models (score-SDE tutorial): a score network
trained by denoising score matching under a VP / sub-VP / VE SDE, sampled by the
reverse SDE.

The network predicts the noise: score(x, t) = -net(x, t) / std(t), with std(t) the
perturbation kernel's standard deviation (score_sde's "scale by sigma"), so the network's
target has unit scale at every t.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lsgm_jax import samplers, sde as sde_lib
from lsgm_jax.methods.base import COMPUTE_DTYPES, Method
from lsgm_jax.models.registry import build_model
from lsgm_jax.objectives.dsm import dsm_loss

PyTree = Any

WEIGHTINGS = ("none", "simple", "likelihood")


def build_sde(sde_config: ml_collections.ConfigDict) -> sde_lib.SDE:
  """The forward process named by ``config.sde.name``."""
  name = sde_config.name
  if name == "vpsde":
    return sde_lib.VPSDE(beta_min=float(sde_config.beta_min), beta_max=float(sde_config.beta_max))
  if name == "subvpsde":
    return sde_lib.SubVPSDE(beta_min=float(sde_config.beta_min),
                            beta_max=float(sde_config.beta_max))
  if name == "vesde":
    return sde_lib.VESDE(sigma_min=float(sde_config.sigma_min),
                         sigma_max=float(sde_config.sigma_max))
  raise ValueError(
      f"config.sde.name={name!r} is not one of ('vpsde', 'subvpsde', 'vesde') for method 'sgm'")


class SGM(Method):
  """Denoising score matching (tutorial eq. for DSM) + reverse-SDE sampling."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    self.sde = build_sde(config.sde)
    if config.loss.weighting not in WEIGHTINGS:
      raise ValueError(
          f"config.loss.weighting={config.loss.weighting!r} is not one of {WEIGHTINGS}")
    self.shape = tuple(data_info.shape)
    dtype = COMPUTE_DTYPES[config.training.compute_dtype]
    self.model = build_model(config.model, self.shape, self.shape[-1], dtype)
    self.sampler = samplers.get_sampler(config.sampling.method)

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    x = jnp.zeros((1,) + self.shape, jnp.float32)
    t = jnp.ones((1,), jnp.float32)
    variables = self.model.init({"params": rng, "dropout": rng}, x, t, train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return params, model_state

  def score_fn(self, params: PyTree, model_state: PyTree, train: bool = False,
               rng: jax.Array | None = None):
    """``score_fn(x, t)`` of the network: -net(x, t) / std(t)."""
    rngs = {"dropout": rng} if rng is not None else {}

    def score(x, t):
      out = self.model.apply({"params": params, **model_state}, x, t, train=train, rngs=rngs)
      _, std = self.sde.marginal(jnp.zeros_like(x), t)
      return -out.astype(jnp.float32) / std
    return score

  def loss(self, params, model_state, batch, rng, step):
    del step
    loss_rng, dropout_rng = jax.random.split(rng)
    score = self.score_fn(params, model_state, train=True, rng=dropout_rng)
    per_example = dsm_loss(loss_rng, self.sde, score, batch["x"],
                           weighting=self.config.loss.weighting,
                           loss_eps=float(self.config.loss.eps))
    loss = jnp.mean(per_example)
    return loss, ({"loss/dsm": loss}, model_state)

  def eval_terms(self, params, model_state, batch, rng):
    score = self.score_fn(params, model_state)
    return {"dsm": dsm_loss(rng, self.sde, score, batch["x"],
                            weighting=self.config.loss.weighting,
                            loss_eps=float(self.config.loss.eps))}

  def generate(self, params, model_state, rng, num):
    sampling = self.config.sampling
    score = self.score_fn(params, model_state)
    samples, info = self.sampler(rng, self.sde, score, (num,) + self.shape,
                                 num_steps=int(sampling.num_steps), eps=float(sampling.eps),
                                 denoise=bool(sampling.denoise))
    return samples, {k: jnp.asarray(v, jnp.float32) for k, v in info.items()}
