"""The seam between the math and the trainer: every family is a ``Method``.

``train.py`` and ``main.py`` only ever call ``init_state``, ``train_step``,
``eval_step`` and ``sample``, so they never branch on the family. A family implements
the four abstract pieces below (params, loss, per-example eval terms, sampling); the
update logic shared by all families (accumulation, clipping, skip guard, EMA) lives in
``lsgm_jax.train_state``.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lsgm_jax import optim
from lsgm_jax.data import DatasetInfo
from lsgm_jax.train_state import TrainState, create_train_state, make_update_step

PyTree = Any

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Method(abc.ABC):
  """A model family: how to build params, compute the loss, evaluate and sample."""

  def __init__(self, config: ml_collections.ConfigDict, data_info: DatasetInfo):
    self.config = config
    self.data_info = data_info

  # --- what a family implements -------------------------------------------------------

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    """Returns (trainable params, model_state) for a fresh model."""

  @abc.abstractmethod
  def loss(self, params: PyTree, model_state: PyTree, batch: dict[str, jax.Array],
           rng: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Scalar training loss, (metrics: scalar loss terms, new model_state)."""

  @abc.abstractmethod
  def eval_terms(self, params: PyTree, model_state: PyTree, batch: dict[str, jax.Array],
                 rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example evaluation terms, each of shape [B]."""

  @abc.abstractmethod
  def generate(self, params: PyTree, model_state: PyTree, rng: jax.Array, num: int
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``num`` samples in data space, and info (at least ``nfe``)."""

  # --- shared by every family ---------------------------------------------------------

  def check_warm_start(self) -> None:
    """Raises a clear error (before anything compiles) if ``warm_start`` cannot succeed,
    e.g. an earlier stage's checkpoint path that holds no checkpoint."""

  def warm_start(self, state: TrainState) -> TrainState:
    """Host-side hook, called once on a fresh start (no checkpoint in the workdir):
    multi-stage families load their earlier stage here (``checkpoint.load_stage``).
    A resumed run restores the workdir's own checkpoint and never calls it. The train
    step donates the state, so no array may appear twice in what this returns."""
    return state

  def sample_task(self, state: TrainState, out_dir: str) -> dict[str, Any] | None:
    """``--mode=sample`` work other than plain samples (a family's config selects it);
    None means: write ``config.sampling.num_samples`` samples as usual."""
    del state, out_dir
    return None

  def reconstruct(self, state: TrainState, x: jax.Array, rng: jax.Array) -> jax.Array:
    """Reconstructions of data ``x`` (EMA params) for reconstruction FID; only families
    with an encoder have them."""
    del state, x, rng
    raise ValueError(f"config.method={self.config.method!r} has no reconstructions: "
                     "config.eval.fid_source='reconstructions' needs an autoencoder")

  def make_optimizer(self) -> optax.GradientTransformation:
    return optim.make_optimizer(self.config.optim, self.config.training.num_train_steps)

  def init_state(self, rng: jax.Array) -> TrainState:
    """A fresh train state; jit it with out_shardings to create it already sharded."""
    init_rng, state_rng = jax.random.split(rng)
    params, model_state = self.init_params(init_rng)
    return create_train_state(params, model_state, self.make_optimizer(), state_rng)

  @functools.cached_property
  def train_step(self):
    """``train_step(state, batch) -> (state, metrics)``, step key fold_in(rng, step)."""
    training = self.config.training
    return make_update_step(
        self.loss,
        self.make_optimizer(),
        num_microbatches=int(training.num_microbatches),
        grad_clip=float(self.config.optim.grad_clip),
        skip_threshold=float(training.skip_threshold),
        ema_decay=float(training.ema_decay),
        compute_dtype=COMPUTE_DTYPES[training.compute_dtype],
        learning_rate_fn=optim.make_schedule(
            self.config.optim, training.num_train_steps),
    )

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
                ) -> dict[str, jax.Array]:
    """Masked sums of the per-example eval terms (EMA params) and the example count."""
    terms = self.eval_terms(state.ema_params, state.model_state, batch, rng)
    mask = batch["mask"].astype(jnp.float32)
    sums = {k: jnp.sum(jnp.where(mask > 0, v, 0.0)) for k, v in terms.items()}
    sums["count"] = jnp.sum(mask)
    return sums

  def sample(self, state: TrainState, rng: jax.Array, num: int
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``num`` samples from the EMA params."""
    return self.generate(state.ema_params, state.model_state, rng, num)

  def fingerprint(self, params: PyTree) -> dict[str, Any]:
    """What identifies this model in a checkpoint: family and parameter shapes."""
    shapes = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "method": self.config.method,
        "num_params": int(sum(np.prod(x.shape, dtype=np.int64) for _, x in shapes)),
        "param_shapes": {jax.tree_util.keystr(k): list(x.shape) for k, x in shapes},
    }
