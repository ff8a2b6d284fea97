"""Classifier guidance: the guided score s(x, t) + w grad_x log p_t(y | x) (issue 13).

Tutorial, "controllable generation" (Bayes' rule for score functions):
grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x); with a scale w (Dhariwal &
Nichol 2021, "classifier scale") the guided score is s + w grad log p_t(y | x), and w = 1
is the exact class-conditional score. score_sde ``controllable_generation.py`` builds the
same sum for its PC sampler; here it is one ``score_fn`` wrapper, so every sampler of
``lsgm_jax.samplers`` (EM, PC, ODE, SSCS, DDIM, Heun, DPM-Solver++) runs guided unchanged.

For CLD the score models return the velocity score grad_v log p_t(u), so the classifier
sees the whole state u = (x, v) (it is trained on the CLD kernel, ``NoiseClassifier``)
and the v-half of its gradient is added.

The classifier is restored from its own workdir with the multi-stage warm-start machinery
(``checkpoint.load_stage``); its config travels in the checkpoint's meta, so its
architecture, SDE and classes need no flags here.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from lsgm_jax.sde.base import SDE, Array, ScoreFn
from lsgm_jax.sde.cld import CLD

LogProbFn = Callable[[Array, Array], Array]  # (x_t, t) -> [B, K] log p_t(y | x_t)


def guided_score_fn(sde: SDE, score_fn: ScoreFn, log_prob_fn: LogProbFn, labels: Array,
                    scale: float | Array) -> ScoreFn:
  """s(x, t) + scale * grad_x log p_t(labels | x) as a ``score_fn``.

  Args:
    sde: the process (for CLD only the velocity part of the gradient is added).
    score_fn: unconditional ``score_fn(x, t)`` (CLD: velocity score of u).
    log_prob_fn: ``log_prob_fn(x, t) -> [B, K]`` log-probabilities of the classes.
    labels: ``[B]`` int classes to steer each example towards.
    scale: guidance scale w (1: the class-conditional score; 0: unguided).

  Returns:
    The guided ``score_fn(x, t)``.
  """
  labels = jnp.asarray(labels, jnp.int32)

  def class_log_prob(x, t):
    # Examples are independent, so the gradient of the sum is the per-example gradient.
    logp = log_prob_fn(x, t)
    return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

  def guided(x, t):
    grad = jax.grad(class_log_prob)(x, t)
    if isinstance(sde, CLD):
      grad = CLD.split(grad)[1]
    return score_fn(x, t) + scale * grad.astype(x.dtype)

  return guided


def sample_labels(class_labels: tuple[int, ...], num: int, num_classes: int) -> Array:
  """``[num]`` labels: ``class_labels`` tiled over the batch, or all classes cycled when
  it is empty (``config.sampling.class_labels``)."""
  if class_labels:
    bad = [c for c in class_labels if not 0 <= int(c) < num_classes]
    if bad:
      raise ValueError(f"config.sampling.class_labels={tuple(class_labels)} has classes "
                       f"{bad} outside [0, {num_classes})")
    labels = jnp.asarray([int(c) for c in class_labels], jnp.int32)
    return jnp.tile(labels, -(-num // len(class_labels)))[:num]
  return jnp.arange(num, dtype=jnp.int32) % num_classes


class Classifier:
  """A trained ``noise_classifier`` restored from its workdir (host arrays)."""

  def __init__(self, path: str):
    from lsgm_jax import checkpoint, data, methods  # noqa: PLC0415 (cycle: methods use us)
    what = f"config.sampling.classifier_checkpoint={path!r}"
    stage = checkpoint.load_stage(path, what)
    raw = stage["meta"].get("config")
    if raw is None:
      raise ValueError(f"{what}: the checkpoint carries no config")
    config = ml_collections.ConfigDict(json.loads(raw) if isinstance(raw, str) else raw)
    if config.method != "noise_classifier":
      raise ValueError(f"{what} is a {config.method!r} run, not a 'noise_classifier' one")
    self.config = config
    self.method = methods.build_method(config, data.dataset_info(config.data))
    self.params = jax.tree.map(jnp.asarray, stage["ema_params"])
    self.model_state = jax.tree.map(jnp.asarray, stage["model_state"])
    self.step = stage["step"]

  @property
  def sde(self) -> SDE:
    return self.method.sde

  @property
  def num_classes(self) -> int:
    return self.method.num_classes

  def log_prob_fn(self) -> LogProbFn:
    return self.method.log_prob_fn(self.params, self.model_state)


def load_classifier(path: str, sde: SDE) -> Classifier:
  """The classifier of ``path``, checked to be trained on the same SDE as ``sde``."""
  with jax.ensure_compile_time_eval():  # often first used inside the jitted sampler
    classifier = Classifier(path)
  if classifier.sde != sde:
    raise ValueError(f"config.sampling.classifier_checkpoint={path!r} was trained on "
                     f"{classifier.sde}, but the score model uses {sde}")
  return classifier
