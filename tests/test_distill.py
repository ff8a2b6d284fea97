"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): the target on exact scores,
and a tiny toy run (teacher -> 2 rounds) with exact resume and a measured 1-round gain."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax import data, samplers, train
from lsgm_jax.methods import build_method
from lsgm_jax.objectives import distill as pd
from lsgm_jax.objectives.dsm import dsm_loss
from lsgm_jax.sde import VPSDE
from lsgm_jax.sde.gaussian import gaussian_score_fn
from tests.helpers import smoke_config

MU = (0.5, -1.0, 2.0)
S = (0.3, 1.0, 0.05)


def _gaussian_teacher(sde):
  score = gaussian_score_fn(sde, jnp.asarray(MU), jnp.asarray(S))

  def x_hat(z, t):  # Tweedie's formula on the exact score
    alpha, sigma = pd.alpha_sigma(sde, t, z)
    return (z + sigma**2 * score(z, t)) / alpha
  return score, x_hat


def _analytic_x_hat(sde, z, t):
  """E[x | z_t] for x ~ N(mu, s^2): mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z - alpha mu)."""
  alpha, sigma = (np.asarray(a, np.float64) for a in pd.alpha_sigma(sde, jnp.asarray(t), z))
  mu, s2 = np.asarray(MU), np.square(S)
  return mu + alpha * s2 / (alpha**2 * s2 + sigma**2) * (np.asarray(z) - alpha * mu)


def test_target_is_two_teacher_ddim_steps_in_one_exact_gaussian():
  """A student that outputs x_tilde reproduces two teacher DDIM steps with one step: per
  step against the closed form, and over whole chains against ``samplers.ddim``."""
  with jax.enable_x64(True):
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    score, teacher_x = _gaussian_teacher(sde)
    eps, n = 1e-3, 4
    # Every student step of the grid at once: row k starts at grid point k % n + 1.
    z = jax.random.normal(jax.random.PRNGKey(0), (4 * n, 3), jnp.float64) * 2.0
    index = jnp.arange(4 * n) % n + 1
    t, t_mid, t_next = (a.astype(jnp.float64) for a in pd.student_times(index, n, 1.0, eps))
    target = pd.distillation_target(sde, teacher_x, z, t, t_mid, t_next)
    one = np.asarray(pd.ddim_step(sde, lambda z_, t_: target, z, t, t_next))
    # Two DDIM steps of the closed-form posterior mean, in numpy float64.
    z2 = np.asarray(z)
    for a, b in ((t, t_mid), (t_mid, t_next)):
      x_hat = _analytic_x_hat(sde, z2, a)
      (a_a, s_a), (a_b, s_b) = (
          [np.asarray(v) for v in pd.alpha_sigma(sde, tt, jnp.asarray(z2))] for tt in (a, b))
      z2 = a_b * x_hat + s_b / s_a * (z2 - a_a * x_hat)
    np.testing.assert_allclose(one, z2, atol=1e-5, rtol=0)
    assert np.abs(one - np.asarray(z)).max() > 1e-2  # the steps move

    # Whole chains: N student steps == 2N teacher steps of the library's DDIM.
    width = 1.0 - eps

    def student_x(z_, t_):
      return pd.distillation_target(sde, teacher_x, z_, t_, t_ - width / (2 * n),
                                    t_ - width / n)
    student_score = pd.score_from_x(sde, student_x)
    rng = jax.random.PRNGKey(1)
    teacher_2n, info_t = samplers.ddim(rng, sde, score, (64, 3), num_steps=2 * n, eps=eps)
    student_n, info_s = samplers.ddim(rng, sde, student_score, (64, 3), num_steps=n, eps=eps)
    assert (int(info_t["nfe"]), int(info_s["nfe"])) == (2 * n, n)
    np.testing.assert_allclose(np.asarray(student_n), np.asarray(teacher_2n), atol=1e-5,
                               rtol=0)
    teacher_n, _ = samplers.ddim(rng, sde, score, (64, 3), num_steps=n, eps=eps)
    assert np.abs(np.asarray(teacher_n) - np.asarray(teacher_2n)).max() > 1e-3


def test_weighting_and_parameterisations():
  alpha, sigma = jnp.array([0.99, 0.6, 0.05]), jnp.sqrt(1 - jnp.array([0.99, 0.6, 0.05])**2)
  np.testing.assert_allclose(pd.truncated_snr_weight(alpha, sigma),
                             [0.99**2 / (1 - 0.99**2), 1.0, 1.0], rtol=1e-5)
  x, e = jnp.array([0.3, -1.2, 2.0]), jnp.array([1.0, 0.5, -0.7])
  z = alpha * x + sigma * e
  np.testing.assert_allclose(pd.x_from_v(z, pd.v_of(x, e, alpha, sigma), alpha, sigma), x,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pd.x_from_eps(z, e, alpha, sigma), x, rtol=1e-4, atol=1e-5)
  # DSM with weighting "v" on a v-network's score (sgm model.prediction="v") is the
  # v-loss ||v_hat - v||^2 summed over dimensions.
  sde = VPSDE(beta_min=0.1, beta_max=20.0)
  x0 = jax.random.normal(jax.random.PRNGKey(2), (3, 4))
  t = jnp.array([0.05, 0.5, 0.95])

  def v_net(x_t, t_):
    return 0.3 * x_t + t_[:, None]

  def score(x_t, t_):
    alpha_t, std_t = sde.marginal(jnp.ones_like(x_t), t_)
    return -x_t - alpha_t / std_t * v_net(x_t, t_)
  rng = jax.random.PRNGKey(5)
  loss = dsm_loss(rng, sde, score, x0, weighting="v", t=t)
  x_t, noise, _ = sde.sample_marginal(jax.random.split(rng)[1], x0, t)
  alpha_t, std_t = sde.marginal(jnp.ones_like(x0), t)
  v = pd.v_of(x0, noise, alpha_t, std_t)
  np.testing.assert_allclose(loss, jnp.sum((v_net(x_t, t) - v) ** 2, axis=-1), rtol=2e-3)


# --- a tiny run: sgm teacher on the 2-D diamond, then 2 rounds 8 -> 4 -> 2 steps -------------

ROUND = 60  # distillation steps per round


def _teacher_config():
  config = smoke_config(**{"training.num_train_steps": 300, "training.log_every": 300,
                           "checkpoint.every_steps": 300, "optim.lr": 2e-3,
                           "optim.warmup_steps": 20})
  config.model.hidden = 64
  config.model.prediction = "v"  # the paper's teachers (Sec. 4)
  config.loss.weighting = "v"
  return config


def _distill_config(teacher_dir, num_rounds):
  config = _teacher_config()
  config.method = "distill"
  config.distill.teacher_checkpoint = teacher_dir
  config.distill.teacher_steps = 8
  config.distill.steps_per_round = ROUND
  config.training.num_train_steps = ROUND * num_rounds
  config.training.log_every = ROUND
  config.training.ema_decay = 0.0  # the authors' distillation configs
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 0
  config.optim.schedule = "linear"
  config.optim.min_lr_ratio = 0.0
  config.checkpoint.every_steps = ROUND
  config.checkpoint.permanent_every_steps = ROUND
  config.sampling.method = "ddim"
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  teacher_dir = str(root / "teacher")
  devices = jax.devices()[:1]
  teacher = train.train(_teacher_config(), teacher_dir, devices=devices)
  # B: round 0 only, then resumed for round 1; A: both rounds straight.
  one_round = train.train(_distill_config(teacher_dir, 1), str(root / "b"), devices=devices)
  resumed = train.train(_distill_config(teacher_dir, 2), str(root / "b"), devices=devices)
  straight = train.train(_distill_config(teacher_dir, 2), str(root / "a"), devices=devices)
  return dict(root=root, teacher_dir=teacher_dir, teacher=teacher, one_round=one_round,
              resumed=resumed, straight=straight)


def test_rounds_checkpoint_and_resume_exactly(runs):
  one, resumed, straight = runs["one_round"], runs["resumed"], runs["straight"]
  assert int(one.model_state["round"]) == 0 and int(straight.model_state["round"]) == 1
  # A checkpoint at every round's end.
  steps = sorted(int(d) for d in os.listdir(runs["root"] / "a" / "checkpoints") if d.isdigit())
  assert steps == [ROUND, 2 * ROUND]
  # Round 1's teacher is round 0's student (EMA 0: its params).
  jax.tree.map(np.testing.assert_array_equal, straight.model_state["teacher"]["params"],
               jax.device_get(one.params))
  # The resumed run is the uninterrupted one, bit for bit.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
               jax.device_get(straight.params))


def test_one_round_student_is_closer_to_the_teacher_than_the_teacher_at_half_steps(runs):
  """On fixed noise: ||student(4) - teacher(8)|| < ||teacher(4) - teacher(8)||."""
  config = _distill_config(runs["teacher_dir"], 1)
  method = build_method(config, data.dataset_info(config.data))
  one, teacher = runs["one_round"], runs["teacher"]
  rng, num = jax.random.PRNGKey(7), 2000
  teacher_ema = jax.device_get(teacher.ema_params)
  t8 = method.student_sampler(teacher_ema, {}, 8, reading="v")(rng, num)[0]
  t4 = method.student_sampler(teacher_ema, {}, 4, reading="v")(rng, num)[0]
  s4 = method.student_sampler(jax.device_get(one.params), {}, 4)(rng, num)[0]
  student_gap = float(jnp.mean(jnp.linalg.norm(s4 - t8, axis=-1)))
  teacher_gap = float(jnp.mean(jnp.linalg.norm(t4 - t8, axis=-1)))
  print(f"mean ||s4 - t8|| = {student_gap:.4f}, ||t4 - t8|| = {teacher_gap:.4f}")
  assert student_gap < 0.6 * teacher_gap, (student_gap, teacher_gap)
  # --mode=sample uses the restored round's step count: round 1, N_1 = 2.
  info = train.sample(_distill_config(runs["teacher_dir"], 2), str(runs["root"] / "b"),
                      devices=jax.devices()[:1])
  assert info["nfe"] == 2.0


def test_bad_config_fails_at_start():
  config = _distill_config("", 2)
  info = data.dataset_info(config.data)
  config.distill.teacher_steps = 6
  with pytest.raises(ValueError, match="config.distill.teacher_steps=6"):
    build_method(config, info)
  config = _distill_config("", 2)
  config.sde.name = "vesde"
  with pytest.raises(ValueError, match="config.sde.name='vesde'"):
    build_method(config, info)
  config = _distill_config("", 2)
  method = build_method(config, info)
  with pytest.raises(ValueError, match="config.distill.teacher_checkpoint is empty"):
    method.check_warm_start()
