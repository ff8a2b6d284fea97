"""Start-of-run checks of a config: contradictions fail here, with the field named.

Unknown fields are already refused by the locked ConfigDict; this module checks values.
Family-specific choices (SDE name, loss weighting, model name) are checked where they are
built, against the same explicit mappings that build them.
"""

from __future__ import annotations

import ml_collections

from lsgm_jax import optim, samplers
from lsgm_jax.samplers import dpm_solver
from lsgm_jax.methods.base import COMPUTE_DTYPES


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ConfigError(message)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line, naming the field) on an invalid value."""
  tr = config.training
  _require(tr.batch_size > 0, f"config.training.batch_size={tr.batch_size} must be > 0")
  _require(tr.num_microbatches >= 1,
           f"config.training.num_microbatches={tr.num_microbatches} must be >= 1")
  _require(tr.batch_size % tr.num_microbatches == 0,
           f"config.training.batch_size={tr.batch_size} is not divisible by "
           f"config.training.num_microbatches={tr.num_microbatches}")
  _require(tr.num_train_steps >= 0,
           f"config.training.num_train_steps={tr.num_train_steps} must be >= 0")
  _require(tr.log_every > 0, f"config.training.log_every={tr.log_every} must be > 0")
  _require(0.0 <= tr.ema_decay < 1.0,
           f"config.training.ema_decay={tr.ema_decay} must be in [0, 1)")
  _require(tr.compute_dtype in COMPUTE_DTYPES,
           f"config.training.compute_dtype={tr.compute_dtype!r} is not one of "
           f"{sorted(COMPUTE_DTYPES)}")
  _require(tr.skip_threshold >= 0,
           f"config.training.skip_threshold={tr.skip_threshold} must be >= 0 (0 = off)")
  _require(tr.max_consecutive_skips >= 1,
           f"config.training.max_consecutive_skips={tr.max_consecutive_skips} must be >= 1")
  op = config.optim
  _require(op.optimizer in optim.OPTIMIZERS,
           f"config.optim.optimizer={op.optimizer!r} is not one of {optim.OPTIMIZERS}")
  _require(op.schedule in optim.SCHEDULES,
           f"config.optim.schedule={op.schedule!r} is not one of {optim.SCHEDULES}")
  _require(op.lr > 0, f"config.optim.lr={op.lr} must be > 0")
  _require(op.grad_clip >= 0, f"config.optim.grad_clip={op.grad_clip} must be >= 0")
  _require(op.warmup_steps >= 0, f"config.optim.warmup_steps={op.warmup_steps} must be >= 0")
  ck = config.checkpoint
  _require(ck.every_steps >= 0, f"config.checkpoint.every_steps={ck.every_steps} must be >= 0")
  _require(ck.keep >= 1, f"config.checkpoint.keep={ck.keep} must be >= 1")
  _require(ck.permanent_every_steps >= 0,
           f"config.checkpoint.permanent_every_steps={ck.permanent_every_steps} must be >= 0")
  sa = config.sampling
  _require(sa.num_samples > 0, f"config.sampling.num_samples={sa.num_samples} must be > 0")
  _require(sa.batch_size > 0, f"config.sampling.batch_size={sa.batch_size} must be > 0")
  _require(sa.num_steps > 0, f"config.sampling.num_steps={sa.num_steps} must be > 0")
  _require(sa.method in samplers.SAMPLERS,
           f"config.sampling.method={sa.method!r} is not one of {sorted(samplers.SAMPLERS)}")
  _require(0.0 <= sa.ddim_eta <= 1.0, f"config.sampling.ddim_eta={sa.ddim_eta} must be in [0, 1]")
  _require(sa.heun_churn >= 0, f"config.sampling.heun_churn={sa.heun_churn} must be >= 0")
  _require(sa.dpm_schedule in dpm_solver.SCHEDULES,
           f"config.sampling.dpm_schedule={sa.dpm_schedule!r} is not one of "
           f"{dpm_solver.SCHEDULES}")
  _require(sa.sscs_order in (1, 2), f"config.sampling.sscs_order={sa.sscs_order} must be 1 or 2")
  _require(config.eval.batch_size > 0,
           f"config.eval.batch_size={config.eval.batch_size} must be > 0")
  _require(config.eval.fid_every >= 0,
           f"config.eval.fid_every={config.eval.fid_every} must be >= 0 (0 = off)")
  if config.eval.fid or config.eval.fid_every:
    from lsgm_jax.evaluation import sample_quality  # pylint: disable=g-import-not-at-top
    try:
      sample_quality.quality_config(config)
    except sample_quality.FIDConfigError as e:
      raise ConfigError(str(e)) from None
