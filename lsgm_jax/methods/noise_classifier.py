"""Noise-conditional classifier p_t(y | x_t) for classifier guidance (issue 13, item 1).

Tutorial ("controllable generation": Bayes' rule for scores,
grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)); score_sde
``controllable_generation.py`` and Song et al. 2021, App. I. Training: x0 and its label y
from the data, t ~ U(eps, T), x_t ~ p_t(x_t | x0) of the same SDE as the score model
(for CLD: u_t = (x_t, v_t) with v0 marginalised, the state the CLD samplers carry), loss
the cross-entropy of the classifier's logits at (x_t, t). Evaluation reports the
cross-entropy and accuracy at t ~ U(eps, T) and the accuracy at fixed times
(``EVAL_TIMES``: accuracy vs t). The trained workdir is then passed to a score model's
``--config.sampling.classifier_checkpoint`` (``lsgm_jax.guidance``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from lsgm_jax.methods.base import COMPUTE_DTYPES, Method
from lsgm_jax.methods.sgm import build_sde
from lsgm_jax.models.classifier import build_classifier
from lsgm_jax.sde.cld import CLD

PyTree = Any
EVAL_TIMES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # clipped to [eps, T]


class NoiseClassifier(Method):
  """Cross-entropy of p_t(y | x_t) on the SDE's perturbed data."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    if not data_info.num_classes:
      raise ValueError(f"method 'noise_classifier' needs labelled data; "
                       f"config.data.name={config.data.name!r} has no classes")
    self.sde = build_sde(config.sde)
    self.is_cld = isinstance(self.sde, CLD)
    self.num_classes = int(data_info.num_classes)
    self.shape = tuple(data_info.shape)
    self.state_shape = (self.shape[:-1] + (2 * self.shape[-1],) if self.is_cld
                        else self.shape)
    self.model = build_classifier(config.model, self.state_shape, self.num_classes,
                                  COMPUTE_DTYPES[config.training.compute_dtype])

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    x = jnp.zeros((1,) + self.state_shape, jnp.float32)
    variables = self.model.init({"params": rng, "dropout": rng}, x, jnp.full((1,), 0.5),
                                train=False)
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def log_prob_fn(self, params: PyTree, model_state: PyTree, train: bool = False,
                  rng: jax.Array | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``log_prob(x_t, t) -> [B, K]`` log p_t(y | x_t) (log-softmax of the logits)."""
    rngs = {"dropout": rng} if rng is not None else {}

    def log_prob(x, t):
      logits = self.model.apply({"params": params, **model_state}, x, t, train=train,
                                rngs=rngs)
      return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return log_prob

  def perturb(self, rng: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
    """x_t ~ p_t(. | x0) (CLD: u_t with v0 ~ N(0, gamma M) marginalised)."""
    if self.is_cld:
      u0 = CLD.join(x0, jnp.zeros_like(x0))
      return self.sde.sample_marginal(rng, u0, t, 0.0, self.sde.hsm_var0v)[0]
    return self.sde.sample_marginal(rng, x0, t)[0]

  def _terms(self, log_prob, x0, labels, t, rng):
    logp = log_prob(self.perturb(rng, x0, t), t)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    acc = (jnp.argmax(logp, axis=-1) == labels).astype(jnp.float32)
    return ce, acc

  def _times(self, rng, n):
    eps = float(self.config.loss.eps)
    return jax.random.uniform(rng, (n,), minval=eps, maxval=self.sde.T)

  def loss(self, params, model_state, batch, rng, step):
    del step
    t_rng, x_rng, drop_rng = jax.random.split(rng, 3)
    log_prob = self.log_prob_fn(params, model_state, train=True, rng=drop_rng)
    x0, labels = batch["x"], batch["label"].astype(jnp.int32)
    ce, acc = self._terms(log_prob, x0, labels, self._times(t_rng, x0.shape[0]), x_rng)
    value = jnp.mean(ce)
    return value, ({"loss/cross_entropy": value, "accuracy": jnp.mean(acc)}, model_state)

  def eval_terms(self, params, model_state, batch, rng):
    log_prob = self.log_prob_fn(params, model_state)
    x0, labels = batch["x"], batch["label"].astype(jnp.int32)
    n = x0.shape[0]
    rngs = jax.random.split(rng, len(EVAL_TIMES) + 2)
    ce, acc = self._terms(log_prob, x0, labels, self._times(rngs[0], n), rngs[1])
    terms = {"cross_entropy": ce, "accuracy": acc}
    eps = float(self.config.loss.eps)
    for t_fixed, key in zip(EVAL_TIMES, rngs[2:]):
      t = jnp.full((n,), min(max(t_fixed, eps), self.sde.T))
      terms[f"accuracy_t{t_fixed:g}"] = self._terms(log_prob, x0, labels, t, key)[1]
    return terms

  def generate(self, params, model_state, rng, num):
    raise ValueError("method 'noise_classifier' does not sample: pass its workdir to a "
                     "score model's --config.sampling.classifier_checkpoint")
