"""Progressive distillation (Salimans & Ho 2022): the ``distill`` stage of a VP score model.

Round 0 restores a trained VP ``sgm`` run (``config.distill.teacher_checkpoint``, its EMA
params) as the frozen teacher and initialises the student from it (Algorithm 2,
theta <- eta). Round r trains a student of N_r = teacher_steps / 2^(r+1) DDIM steps on
the target of two teacher DDIM steps (``objectives.distill``), with v-prediction and the
truncated-SNR weight max(SNR, 1); at the start of round r + 1 the student becomes the
teacher (eta <- theta) and the step count halves. All rounds run inside one training
run of ``rounds * distill.steps_per_round`` steps:

* the round is a function of the step (r = step // steps_per_round) and is also stored in
  ``model_state["round"]``, both in the checkpoint, so a resumed run continues exactly;
* at a round boundary the train step (one compiled program, ``jnp.where`` on the round
  flag) copies the student's EMA params into the teacher and the student, and resets the
  optimizer state, so each round has its own optimizer and learning-rate schedule (the
  authors' configs anneal the learning rate linearly to 0 over every round, EMA 0);
* the configs checkpoint at every round's end (``checkpoint.every_steps`` and
  ``permanent_every_steps`` = ``steps_per_round``), so every 2^k-step student is kept.

Parameterisations. The student reads its network output as v (x_hat = alpha z - sigma v,
paper Appendix D). The round-0 teacher is an ``sgm`` network read as its
``model.prediction``: "v" (as the paper trains its teachers, Sec. 4; the student then
starts exactly at the teacher), or "eps" (x_hat = (z - sigma eps_hat) / alpha). An eps
teacher's weights still initialise the v student: the readings agree where alpha ~ 1
(v -> eps as sigma -> 0), and the first round's steps must refit the rest. Later
teachers are students, read as v.

``--mode=sample`` runs the student with deterministic DDIM (``samplers.ddim``, eta 0, no
extra denoising step) at its own step count: ``distill.sample_steps``, or (0) the
restored round's N_r.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsgm_jax import checkpoint, optim, samplers
from lsgm_jax.methods.base import Method
from lsgm_jax.methods.sgm import SGM
from lsgm_jax.objectives import distill as pd
from lsgm_jax.train_state import TrainState

PyTree = Any
TEACHER_FIELD = "config.distill.teacher_checkpoint"


def _tree_where(flag: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


class Distill(Method):
  """Progressive distillation of a VP score model into a 2^k-step DDIM student."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    dc = config.distill
    if config.sde.name != "vpsde":
      raise ValueError(f"config.sde.name={config.sde.name!r}: progressive distillation "
                       "needs 'vpsde' (v-prediction uses alpha^2 + sigma^2 = 1)")
    per_round, total = int(dc.steps_per_round), int(config.training.num_train_steps)
    if per_round <= 0 or total % per_round or total == 0:
      raise ValueError(f"config.training.num_train_steps={total} must be a positive "
                       f"multiple of config.distill.steps_per_round={per_round}")
    self.steps_per_round = per_round
    self.num_rounds = total // per_round
    self.teacher_steps = int(dc.teacher_steps)
    if self.teacher_steps % 2 ** self.num_rounds:
      raise ValueError(f"config.distill.teacher_steps={self.teacher_steps} is not divisible "
                       f"by 2^{self.num_rounds} ({self.num_rounds} rounds)")
    if int(dc.sample_steps) < 0:
      raise ValueError(f"config.distill.sample_steps={dc.sample_steps} must be >= 0")
    if config.sampling.method != "ddim":
      raise ValueError(f"config.sampling.method={config.sampling.method!r}: the distilled "
                       "student samples with 'ddim' (its training target is DDIM)")
    self.net = SGM(config, data_info)  # the score network's architecture and the VP SDE
    self.sde = self.net.sde
    self.shape = self.net.shape
    self.eps = float(config.sampling.eps)  # the grid ends here in training and sampling
    self._sample_round: int | None = None

  def student_steps(self, round_index: int | jax.Array) -> int | jax.Array:
    """N_r = teacher_steps / 2^(r + 1): the student's DDIM steps in round r."""
    if isinstance(round_index, int):
      return self.teacher_steps // 2 ** (round_index + 1)
    return self.teacher_steps // jnp.left_shift(2, round_index.astype(jnp.int32))

  # --------------------------------------------------------------------------- params

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    # Zeros of the network's shapes: warm_start puts the teacher's weights in the
    # student and the teacher on a fresh start (no random init to compile or run).
    params, state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                 jax.eval_shape(self.net.init_params, rng))
    teacher = {"params": jax.tree.map(jnp.copy, params), "state": state}
    return params, {"net": jax.tree.map(jnp.copy, state), "teacher": teacher,
                    "round": jnp.zeros((), jnp.int32)}

  def make_optimizer(self):
    # One schedule per round: the optimizer state (its step count included) is reset at
    # every round boundary by the train step below.
    return optim.make_optimizer(self.config.optim, self.steps_per_round)

  def x_pred(self, params: PyTree, net_state: PyTree, reading: str | jax.Array):
    """``x_hat(z, t)`` of a network: ``reading`` "v", "eps", or a traced bool (True: v)."""
    def x_hat(z, t):
      out = self.net.model.apply({"params": params, **net_state}, z, t, train=False)
      out = out.astype(jnp.float32)
      alpha, sigma = pd.alpha_sigma(self.sde, t, z)
      as_v = pd.x_from_v(z, out, alpha, sigma)
      if isinstance(reading, str):
        return as_v if reading == "v" else pd.x_from_eps(z, out, alpha, sigma)
      return jnp.where(reading, as_v, pd.x_from_eps(z, out, alpha, sigma))
    return x_hat

  def _teacher_x(self, model_state: PyTree):
    teacher = jax.lax.stop_gradient(model_state["teacher"])
    # Round 0: the sgm teacher read as config.model.prediction; later rounds: the
    # previous student (v).
    reading = "v" if self.config.model.prediction == "v" else model_state["round"] > 0
    return self.x_pred(teacher["params"], teacher["state"], reading)

  # --------------------------------------------------------------------------- warm start

  def check_warm_start(self) -> None:
    path = self.config.distill.teacher_checkpoint
    if not path:
      raise ValueError(f"{TEACHER_FIELD} is empty: distillation starts from the workdir of "
                       "a trained VP 'sgm' run")
    meta = checkpoint.read_stage_meta(path, f"{TEACHER_FIELD}={path!r}")
    method = meta.get("fingerprint", {}).get("method")
    saved = meta.get("config")
    saved = json.loads(saved) if isinstance(saved, str) else (saved or {})
    sde_name = saved.get("sde", {}).get("name", "vpsde")
    if method != "sgm" or sde_name != "vpsde":
      raise checkpoint.CheckpointMismatchError(
          f"{TEACHER_FIELD}={path!r} holds method {method!r} with sde {sde_name!r}; the "
          "teacher must be an 'sgm' run with config.sde.name='vpsde'")
    prediction = saved.get("model", {}).get("prediction", "eps")
    if prediction != self.config.model.prediction:
      raise checkpoint.CheckpointMismatchError(
          f"{TEACHER_FIELD}={path!r} predicts {prediction!r}: pass "
          f"--config.model.prediction={prediction}")

  def warm_start(self, state: TrainState) -> TrainState:
    """Fresh start: the teacher's EMA params become the frozen teacher, the student's
    params and its EMA (theta <- eta); round 0."""
    self.check_warm_start()
    path = self.config.distill.teacher_checkpoint
    loaded = checkpoint.load_stage(path, f"{TEACHER_FIELD}={path!r}")
    params, net_state = loaded["ema_params"], loaded["model_state"] or {}
    expected = jax.tree.map(lambda a: tuple(a.shape), state.params)
    if jax.tree.map(lambda a: tuple(np.shape(a)), params) != expected:
      raise checkpoint.CheckpointMismatchError(
          f"{TEACHER_FIELD}={path!r}: the teacher's parameters do not match config.model "
          "(use the teacher run's model section)")
    copy = functools.partial(jax.tree.map, lambda a: jnp.array(a))  # distinct buffers
    logging.info("distill: teacher from %s (step %d), %d rounds %d -> %d steps", path,
                 loaded["step"], self.num_rounds, self.teacher_steps,
                 self.student_steps(self.num_rounds - 1))
    model_state = {"net": copy(net_state), "round": jnp.zeros((), jnp.int32),
                   "teacher": {"params": copy(params), "state": copy(net_state)}}
    return state.replace(params=copy(params), ema_params=copy(params),
                         model_state=model_state)

  # --------------------------------------------------------------------------- training

  @functools.cached_property
  def train_step(self):
    """The shared update step, preceded by the round switch of Algorithm 2's outer loop:
    at step = r * steps_per_round (r >= 1) the teacher and the student become the
    student's EMA params, the optimizer state is reset and ``round`` becomes r."""
    base = Method.train_step.func(self)  # the shared step, built for this method
    tx = self.make_optimizer()
    per_round = self.steps_per_round
    schedule = optim.make_schedule(self.config.optim, per_round)

    def step(state: TrainState, batch):
      new_round = (state.step > 0) & (state.step % per_round == 0)
      ms = state.model_state
      teacher = {"params": state.ema_params, "state": ms["net"]}
      model_state = dict(ms, teacher=_tree_where(new_round, teacher, ms["teacher"]),
                         round=(state.step // per_round).astype(jnp.int32))
      params = _tree_where(new_round, state.ema_params, state.params)
      opt_state = _tree_where(new_round, tx.init(params), state.opt_state)
      state = state.replace(params=params, opt_state=opt_state, model_state=model_state)
      new_state, metrics = base(state, batch)
      metrics = dict(metrics, lr=schedule(state.step % per_round), **{"distill/round": model_state["round"].astype(jnp.float32),
                                 "distill/student_steps": self.student_steps(
                                     model_state["round"]).astype(jnp.float32)})
      return new_state, metrics
    return step

  def _loss_terms(self, params, model_state, x, rng):
    student = self.x_pred(params, model_state["net"], "v")
    steps = self.student_steps(model_state["round"])
    return pd.distill_loss(rng, self.sde, student, self._teacher_x(model_state), x,
                           steps, self.eps)

  def loss(self, params, model_state, batch, rng, step):
    del step
    value = jnp.mean(self._loss_terms(params, model_state, batch["x"], rng))
    return value, ({"loss/distill": value}, model_state)

  def eval_terms(self, params, model_state, batch, rng):
    """Per example: Algorithm 2's weighted loss at the current round's step count."""
    return {"distill": self._loss_terms(params, model_state, batch["x"], rng)}

  # --------------------------------------------------------------------------- sampling

  def sample_task(self, state: TrainState, out_dir: str) -> None:
    """Host side, before sampling: the restored round decides the step count (unless
    ``distill.sample_steps`` is set); then the usual samples are written."""
    del out_dir
    self._sample_round = int(jax.device_get(state.model_state["round"]))
    logging.info("distill: sampling the round-%d student with %d DDIM steps",
                 self._sample_round, self.sample_num_steps)
    return None

  @property
  def sample_num_steps(self) -> int:
    steps = int(self.config.distill.sample_steps)
    if steps:
      return steps
    last = self.num_rounds - 1 if self._sample_round is None else self._sample_round
    return self.student_steps(last)

  def student_sampler(self, params: PyTree, net_state: PyTree, num_steps: int,
                      reading: str = "v"):
    """``sample(rng, num) -> (samples, info)``: DDIM (eta 0) with the model's x_hat."""
    score = pd.score_from_x(self.sde, self.x_pred(params, net_state, reading))

    def sample(rng, num):
      return samplers.ddim(rng, self.sde, score, (num,) + self.shape, num_steps=num_steps,
                           eta=0.0, eps=self.eps, denoise=False)
    return sample

  def generate(self, params, model_state, rng, num):
    samples, info = self.student_sampler(params, model_state["net"],
                                         self.sample_num_steps)(rng, num)
    return samples, {"nfe": jnp.asarray(info["nfe"], jnp.float32)}

