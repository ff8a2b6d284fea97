"""ScoreVAE (score_vae_paper.txt): an encoder plus a frozen unconditional diffusion prior;
p(x | z) by Bayes' rule for scores. Three stages, selected by ``config.score_vae.stage``
(the paper code: GBATZOLIS/conditional_score_diffusion, branch ``scoreVAE``, b188acd3):

* ``prior``: the unconditional score model. This is the ``sgm`` method unchanged
  (``methods/sgm.py``; ``config.model`` / ``config.sde`` / ``config.loss`` describe it),
  its params under ``params["prior"]``. The paper's priors: VP SDE (beta 0.1..20), DDPM
  U-Net, data in [0, 1] seen by the network as 2x - 1 (``model.center_input``), eps
  prediction, time input 999 t, the "simple" weighting lambda = sigma^2.
* ``encoder``: restores the prior's EMA params from ``config.score_vae.prior_checkpoint``
  (a ``prior`` run of this method, or any ``sgm`` run with a VP / sub-VP / VE SDE: the
  prior is replaceable without retraining the encoder, paper section 3.3), freezes it and
  trains only the time-dependent encoder on L_beta (``objectives/score_vae.py``). The
  frozen prior lives in ``model_state["prior"]``: it is not a trainable leaf, so it has no
  optimizer state and no EMA, is read through ``stop_gradient`` and leaves every step
  bitwise unchanged. Its dropout is off unless ``score_vae.prior_dropout`` (the
  reference runs it in train mode, dropout 0.1 for CIFAR-10). The conditional score
  differentiates log q through the encoder inside the loss, so a training step is a
  second-order backward pass, compiled as one program with the rest of the step.
* ``beta_vae``: the baseline of Tables 1-2: the same encoder without t and a mirror
  decoder, loss ||x - x_hat|| + beta KL (un-squared per-image L2, as the paper code);
  the posterior mean is decoded at test time.

Reconstruction encodes held-out x_0, draws z ~ q(z | x_0) (``posterior="mean"``: its
mean) and runs the conditional reverse SDE; generation draws z ~ N(0, I) (the latent
variable model of section 3.3); interpolation decodes convex combinations of two
images' latents with shared sampler noise.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsgm_jax import checkpoint, samplers
from lsgm_jax.methods.base import COMPUTE_DTYPES, Method
from lsgm_jax.methods.sgm import SGM
from lsgm_jax.models import encoders
from lsgm_jax.objectives import score_vae as sv_obj
from lsgm_jax.samplers.euler_maruyama import batch_time, step_keys
from lsgm_jax.train_state import TrainState

PyTree = Any
STAGES = ("prior", "encoder", "beta_vae")
PRIOR_SDES = ("vpsde", "subvpsde", "vesde")
LOG_Q = ("exact", "reference")
TASKS = ("generate", "reconstruct", "interpolate")
POSTERIORS = ("sample", "mean")
EM_GRIDS = ("reference", "library")
ENCODERS = ("simple", "ddpm")
DECODERS = ("mirror", "ddpm")
LPIPS_INPUTS = ("correct", "reference")
PRIOR_FIELD = "config.score_vae.prior_checkpoint"
# What identifies the prior's score function in its run's saved config; the encoder
# stage must describe the same prior in config.model / config.sde / config.data.
_PRIOR_SDE_FIELDS = {"vpsde": ("beta_min", "beta_max"), "subvpsde": ("beta_min", "beta_max"),
                     "vesde": ("sigma_min", "sigma_max")}
_MODEL_FIELDS_IGNORED = ("dropout", "remat")


def _check(value, allowed, field):
  if value not in allowed:
    raise ValueError(f"config.score_vae.{field}={value!r} is not one of {allowed}")


def reference_euler_maruyama(rng: jax.Array, sde, score_fn, shape: tuple[int, ...], *,
                             num_steps: int = 1000, eps: float = 1e-3,
                             denoise: bool = True) -> tuple[jax.Array, dict[str, Any]]:
  """The paper code's conditional Euler-Maruyama loop (``sampling/conditional.py`` with
  ``conditionalEulerMaruyamaPredictor``): times ``linspace(T, eps, N)``, every step of
  size (T - eps) / N, and the last step's noise-free mean returned (``denoise``,
  the reference's ``noise_removal``)."""
  rng_prior, rng_steps = jax.random.split(rng)
  x = sde.prior_sample(rng_prior, shape)
  reverse = sde.reverse(score_fn)
  times = jnp.linspace(sde.T, eps, num_steps, dtype=jnp.float32)
  dt = (sde.T - eps) / num_steps

  def step(carry, inputs):
    x, _ = carry
    key, t = inputs
    drift, diffusion = reverse.sde(x, batch_time(t, x))
    mean = x - drift * dt
    return (mean + diffusion * math.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype),
            mean), None

  (x, mean), _ = jax.lax.scan(step, (x, x), (step_keys(rng_steps, num_steps), times))
  return (mean if denoise else x), {"nfe": jnp.asarray(num_steps, jnp.int32)}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class ScoreVAE(Method):
  """The three ScoreVAE stages (``prior``, ``encoder``, ``beta_vae``)."""

  def __init__(self, config: ml_collections.ConfigDict, data_info):
    super().__init__(config, data_info)
    sv = config.score_vae
    _check(sv.stage, STAGES, "stage")
    _check(sv.log_q, LOG_Q, "log_q")
    _check(sv.weighting, sv_obj.WEIGHTINGS, "weighting")
    _check(sv.task, TASKS, "task")
    _check(sv.posterior, POSTERIORS, "posterior")
    _check(sv.em_grid, EM_GRIDS, "em_grid")
    _check(sv.encoder.name, ENCODERS, "encoder.name")
    _check(sv.decoder, DECODERS, "decoder")
    _check(sv.lpips_input, LPIPS_INPUTS, "lpips_input")
    if data_info.is_2d:
      raise ValueError(f"method 'score_vae' needs image data; config.data.name="
                       f"{config.data.name!r} is 2-D")
    if float(sv.beta) < 0:
      raise ValueError(f"config.score_vae.beta={sv.beta} must be >= 0")
    if int(sv.latent_dim) <= 0:
      raise ValueError(f"config.score_vae.latent_dim={sv.latent_dim} must be > 0")
    self.stage = sv.stage
    self.shape = tuple(data_info.shape)
    self.centered = bool(config.data.centered)
    self.dtype = COMPUTE_DTYPES[config.training.compute_dtype]
    self.prior = None
    if self.stage in ("prior", "encoder"):
      if config.sde.name not in PRIOR_SDES:
        raise ValueError(f"config.sde.name={config.sde.name!r}: the ScoreVAE prior is a "
                         f"scalar-SDE score model, one of {PRIOR_SDES}")
      self.prior = SGM(config, data_info)
      self.sde = self.prior.sde
    if self.stage != "prior":
      self.encoder = self._build_encoder(time_conditional=self.stage == "encoder")
    if self.stage == "encoder":
      samplers.get_sampler(config.sampling.method)  # unknown names fail at start
    if self.stage == "beta_vae":
      self.decoder = self._build_decoder()

  # --------------------------------------------------------------------------- models

  def _build_encoder(self, time_conditional: bool):
    enc, latent = self.config.score_vae.encoder, int(self.config.score_vae.latent_dim)
    if enc.name == "simple":
      return encoders.SimpleEncoder(c_hid=int(enc.nf), latent_dim=latent,
                                    time_conditional=time_conditional, dtype=self.dtype)
    levels = len(enc.ch_mult)
    if self.shape[0] % 2 ** (levels - 1):
      raise ValueError(f"config.score_vae.encoder.ch_mult={tuple(enc.ch_mult)}: image side "
                       f"{self.shape[0]} is not divisible by 2**{levels - 1}")
    return encoders.DDPMEncoder(
        nf=int(enc.nf), ch_mult=tuple(enc.ch_mult), num_res_blocks=int(enc.num_res_blocks),
        attn_resolutions=tuple(enc.attn_resolutions), dropout=float(enc.dropout),
        latent_dim=latent, time_conditional=time_conditional,
        center_input=not self.centered, dtype=self.dtype)

  def _build_decoder(self):
    enc, channels = self.config.score_vae.encoder, self.shape[-1]
    if self.config.score_vae.decoder == "mirror":
      return encoders.MirrorDecoder(c_hid=int(enc.nf), out_channels=channels, dtype=self.dtype)
    return encoders.DDPMDecoder(
        nf=int(enc.nf), ch_mult=tuple(enc.ch_mult), num_res_blocks=int(enc.num_res_blocks),
        attn_resolutions=tuple(enc.attn_resolutions), dropout=float(enc.dropout),
        out_channels=channels, dtype=self.dtype)

  def to_unit(self, x: jax.Array) -> jax.Array:
    """Data-space images to [0, 1] (where L2 / LPIPS are measured)."""
    return (x + 1.0) / 2.0 if self.centered else x

  def from_unit(self, x: jax.Array) -> jax.Array:
    return 2.0 * x - 1.0 if self.centered else x

  def init_params(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    prior_rng, enc_rng, dec_rng = jax.random.split(rng, 3)
    x = jnp.zeros((1,) + self.shape, jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    if self.stage == "prior":
      p, s = self.prior.init_params(prior_rng)
      return {"prior": p}, {"prior": s}
    params = {"encoder": self.encoder.init({"params": enc_rng, "dropout": enc_rng}, x, t)
              ["params"]}
    if self.stage == "beta_vae":
      z = jnp.zeros((1, int(self.config.score_vae.latent_dim)), jnp.float32)
      params["decoder"] = self.decoder.init({"params": dec_rng, "dropout": dec_rng}, z,
                                            self.shape[0])["params"]
      return params, {}
    # The frozen prior: zeros of its shapes here (no random init to compile or run),
    # replaced by the trained prior in warm_start on a fresh start.
    p, s = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        jax.eval_shape(self.prior.init_params, prior_rng))
    return params, {"prior": {"params": p, "state": s}}

  def encode_fn(self, enc_params: PyTree, train: bool = False, rng: jax.Array | None = None):
    """``encode(x, t) -> (mean, log_variance)`` of the encoder (t ignored for beta_vae)."""
    rngs = {"dropout": rng} if rng is not None else {}

    def encode(x, t):
      return self.encoder.apply({"params": enc_params}, x, t, train=train, rngs=rngs)
    return encode

  def decode_fn(self, dec_params: PyTree):
    """beta_vae: ``decode(z)`` -> images in [0, 1] (sigmoid of the decoder, paper code)."""
    def decode(z):
      return jax.nn.sigmoid(self.decoder.apply({"params": dec_params}, z, self.shape[0]))
    return decode

  def prior_score_fn(self, model_state: PyTree, train: bool = False,
                     rng: jax.Array | None = None):
    """The frozen prior's score ``s(x_t, t)``; its params are constants of the step."""
    frozen = jax.lax.stop_gradient(model_state["prior"])
    return self.prior.score_fn(frozen["params"], frozen["state"], train=train, rng=rng)

  # --------------------------------------------------------------------------- warm start

  def check_warm_start(self) -> None:
    """Stage ``encoder`` on a fresh start: a prior checkpoint at the configured path,
    written by a scalar-SDE score model; otherwise one line naming the field."""
    if self.stage != "encoder":
      return
    path = self.config.score_vae.prior_checkpoint
    if not path:
      raise ValueError(f"{PRIOR_FIELD} is empty: stage 'encoder' starts from a trained "
                       "prior (the workdir of a ':prior' run, or of any 'sgm' run with a "
                       f"VP / sub-VP / VE SDE)")
    meta = checkpoint.read_stage_meta(path, f"{PRIOR_FIELD}={path!r}")
    self._check_prior_meta(path, meta)

  def _check_prior_meta(self, path: str, meta: dict[str, Any]) -> None:
    method = meta.get("fingerprint", {}).get("method")
    saved = meta.get("config")
    saved = json.loads(saved) if isinstance(saved, str) else (saved or {})
    stage = saved.get("score_vae", {}).get("stage")
    is_prior = method == "sgm" or (method == "score_vae" and stage == "prior")
    if not is_prior:
      what = f"method {method!r}" + (f" stage {stage!r}" if method == "score_vae" else "")
      raise checkpoint.CheckpointMismatchError(
          f"{PRIOR_FIELD}={path!r} holds a checkpoint of {what}, not a diffusion prior "
          "(train one with a score_vae ':prior' config or any 'sgm' config)")
    sde_name = saved.get("sde", {}).get("name")
    if sde_name is not None and sde_name not in PRIOR_SDES:
      raise checkpoint.CheckpointMismatchError(
          f"{PRIOR_FIELD}={path!r} holds an 'sgm' model with config.sde.name={sde_name!r}; "
          f"the ScoreVAE prior must be one of {PRIOR_SDES}")
    # The encoder stage rebuilds the prior from its own config.model / config.sde /
    # config.data.centered: they must describe the saved prior.
    ours = self.config.to_dict()
    keys = [f"sde.{k}" for k in ("name",) + _PRIOR_SDE_FIELDS.get(sde_name or "", ())]
    keys += [f"model.{k}" for k in saved.get("model", {}) if k not in _MODEL_FIELDS_IGNORED]
    keys += ["data.centered", "data.name", "data.image_size"]
    flat_saved, flat_ours = _flatten(saved), _flatten(ours)
    differ = []
    for k in keys:
      if k in flat_saved and k in flat_ours:
        a, b = flat_saved[k], flat_ours[k]
        a = list(a) if isinstance(a, (list, tuple)) else a
        b = list(b) if isinstance(b, (list, tuple)) else b
        if a != b:
          if isinstance(a, list):  # ml_collections' tuple syntax, no spaces
            a = "(" + ",".join(map(str, a)) + ("," if len(a) == 1 else "") + ")"
          differ.append(f"--config.{k}={a}")
    if differ:
      raise checkpoint.CheckpointMismatchError(
          f"{PRIOR_FIELD}={path!r} holds a prior trained with other settings than this "
          f"config's model / sde / data; pass them: {' '.join(differ)}")

  def warm_start(self, state: TrainState) -> TrainState:
    """Stage ``encoder`` on a fresh start: the prior's EMA params (and model state) from
    ``config.score_vae.prior_checkpoint`` become the frozen ``model_state["prior"]``."""
    if self.stage != "encoder":
      return state
    self.check_warm_start()
    path = self.config.score_vae.prior_checkpoint
    loaded = checkpoint.load_stage(path, f"{PRIOR_FIELD}={path!r}")
    params, model_state = loaded["ema_params"], loaded["model_state"]
    if loaded["meta"].get("fingerprint", {}).get("method") == "score_vae":
      params, model_state = params["prior"], model_state.get("prior", {})
    expected = jax.tree.map(lambda a: tuple(a.shape), state.model_state["prior"]["params"])
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    if got != expected:
      raise checkpoint.CheckpointMismatchError(
          f"{PRIOR_FIELD}={path!r}: the prior's parameters do not match config.model "
          "(train the prior with this config's model section, or set it to the prior's)")
    prior = {"params": jax.tree.map(jnp.asarray, params),
             "state": jax.tree.map(jnp.asarray, model_state or {})}
    logging.info("encoder stage: frozen prior from %s (step %d)", path, loaded["step"])
    return state.replace(model_state=dict(state.model_state, prior=prior))

  # --------------------------------------------------------------------------- losses

  def loss(self, params, model_state, batch, rng, step):
    if self.stage == "prior":
      value, (metrics, ms) = self.prior.loss(params["prior"], model_state["prior"], batch,
                                             rng, step)
      return value, (metrics, {"prior": ms})
    sv = self.config.score_vae
    loss_rng, enc_rng, prior_rng = jax.random.split(rng, 3)
    if self.stage == "beta_vae":
      terms = self._beta_vae_terms(params, batch["x"], loss_rng, train=True, enc_rng=enc_rng)
    else:
      prior_score = self.prior_score_fn(
          model_state, train=bool(sv.prior_dropout),
          rng=prior_rng if sv.prior_dropout else None)
      terms = sv_obj.l_beta_terms(
          loss_rng, self.sde, prior_score, self.encode_fn(params["encoder"], True, enc_rng),
          batch["x"], beta=float(sv.beta), exact=sv.log_q == "exact",
          weighting=sv.weighting, t_eps=float(sv.t_eps))
    metrics = {f"loss/{k}": jnp.mean(v) for k, v in terms.items()}
    return metrics["loss/loss"], (metrics, model_state)

  def _beta_vae_terms(self, params, x, rng, train=False, enc_rng=None):
    encode = self.encode_fn(params["encoder"], train, enc_rng)
    return sv_obj.beta_vae_terms(
        rng, lambda xu: encode(self.from_unit(xu), None), self.decode_fn(params["decoder"]),
        self.to_unit(x), beta=float(self.config.score_vae.beta))

  # --------------------------------------------------------------------------- decoding

  def conditional_score(self, params: PyTree, model_state: PyTree, z: jax.Array):
    """``score(x_t, t)`` of p(x_t | z): the frozen prior's score plus grad_{x_t} log
    q_t(z | x_t) through the encoder (EMA params at evaluation; paper section 3.3)."""
    return sv_obj.conditional_score_fn(self.prior_score_fn(model_state),
                                       self.encode_fn(params["encoder"]), z,
                                       exact=self.config.score_vae.log_q == "exact")

  def decode_latent(self, params: PyTree, model_state: PyTree, z: jax.Array,
                    rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Images (data space) from latents ``z`` ``[B, latent]``: the conditional reverse
    SDE (stage ``encoder``) or the decoder's output (stage ``beta_vae``)."""
    if self.stage == "beta_vae":
      return self.from_unit(self.decode_fn(params["decoder"])(z)), {
          "nfe": jnp.zeros((), jnp.float32)}
    sv, sampling = self.config.score_vae, self.config.sampling
    score = self.conditional_score(params, model_state, z)
    shape = (z.shape[0],) + self.shape
    if sampling.method == "euler_maruyama" and sv.em_grid == "reference":
      x, info = reference_euler_maruyama(rng, self.sde, score, shape,
                                         num_steps=int(sampling.num_steps),
                                         eps=float(sampling.eps),
                                         denoise=bool(sampling.denoise))
    else:
      options = dict(eps=float(sampling.eps), denoise=bool(sampling.denoise))
      if sampling.method != "probability_flow_ode":
        options["num_steps"] = int(sampling.num_steps)
      x, info = samplers.get_sampler(sampling.method)(rng, self.sde, score, shape, **options)
    return x, {k: jnp.asarray(v, jnp.float32) for k, v in info.items() if jnp.ndim(v) == 0}

  def encode_posterior(self, params: PyTree, x: jax.Array, rng: jax.Array) -> jax.Array:
    """z ~ q(z | x_0) (``posterior="sample"``) or its mean; beta_vae always the mean."""
    t0 = jnp.zeros((x.shape[0],), jnp.float32)
    mean, logvar = self.encode_fn(params["encoder"])(x, t0)
    if self.stage == "beta_vae" or self.config.score_vae.posterior == "mean":
      return mean
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

  def reconstruct(self, state: TrainState, x: jax.Array, rng: jax.Array) -> jax.Array:
    """``Method.reconstruct``: reconstructions of ``x`` with the EMA params, clipped to
    the data range (reconstruction FID, ``eval.fid_source='reconstructions'``)."""
    if self.stage == "prior":
      return super().reconstruct(state, x, rng)
    recon, _ = self.reconstruct_with_info(state.ema_params, state.model_state, x, rng)
    return jnp.clip(recon, *((-1.0, 1.0) if self.centered else (0.0, 1.0)))

  def reconstruct_with_info(self, params: PyTree, model_state: PyTree, x: jax.Array,
                            rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Reconstructions of data-space images ``x`` (paper Figure 1) and the decoder's
    info (NFE)."""
    z_rng, sde_rng = jax.random.split(rng)
    return self.decode_latent(params, model_state, self.encode_posterior(params, x, z_rng),
                              sde_rng)

  def generate(self, params, model_state, rng, num):
    """Stage ``prior``: the prior's samples. Otherwise z ~ N(0, I) decoded."""
    if self.stage == "prior":
      return self.prior.generate(params["prior"], model_state["prior"], rng, num)
    z_rng, sde_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (num, int(self.config.score_vae.latent_dim)))
    x, info = self.decode_latent(params, model_state, z, sde_rng)
    if self.stage == "beta_vae":
      return x, info
    return jnp.clip(x, *((-1.0, 1.0) if self.centered else (0.0, 1.0))), info

  # --------------------------------------------------------------------------- evaluation

  @functools.cached_property
  def lpips_net(self):
    path = self.config.score_vae.lpips_weights_path
    if not path:
      return None
    from lsgm_jax.evaluation import reconstruction
    return reconstruction.load_lpips(path)

  def reconstruction_metrics(self, x: jax.Array, recon: jax.Array) -> dict[str, jax.Array]:
    """Per-image L2 on [0, 1] (reconstructions clipped to [0, 1]) and LPIPS if weights."""
    from lsgm_jax.evaluation import reconstruction
    sv = self.config.score_vae
    x_unit, r_unit = self.to_unit(x), jnp.clip(self.to_unit(recon), 0.0, 1.0)
    terms = reconstruction.reconstruction_metrics(x_unit, r_unit)  # l2, mse, psnr
    if self.lpips_net is not None:
      lp = functools.partial(reconstruction.lpips, self.lpips_net, x_unit, r_unit,
                             size=int(sv.lpips_size))
      terms["lpips"] = lp(reference_input=sv.lpips_input == "reference")
      # Also the paper code's number ([0, 1] fed to a net expecting [-1, 1]), to set
      # against Tables 1-2.
      terms["lpips_paper_code"] = lp(reference_input=True)
    return terms

  def eval_terms(self, params, model_state, batch, rng):
    if self.stage == "prior":
      return self.prior.eval_terms(params["prior"], model_state["prior"], batch, rng)
    sv, x = self.config.score_vae, batch["x"]
    loss_rng, rec_rng = jax.random.split(rng)
    if self.stage == "beta_vae":
      terms = self._beta_vae_terms(params, x, loss_rng)
    else:
      terms = sv_obj.l_beta_terms(
          loss_rng, self.sde, self.prior_score_fn(model_state),
          self.encode_fn(params["encoder"]), x, beta=float(sv.beta),
          exact=sv.log_q == "exact", weighting=sv.weighting, t_eps=float(sv.t_eps))
    if sv.eval_reconstruct:
      recon, _ = self.reconstruct_with_info(params, model_state, x, rec_rng)
      terms.update(self.reconstruction_metrics(x, recon))
    return terms

  # --------------------------------------------------------------------------- sample tasks

  def sample_task(self, state: TrainState, out_dir: str) -> dict[str, Any] | None:
    """``--mode=sample`` with ``score_vae.task`` reconstruct / interpolate (the generate
    task, z ~ N(0, I), is the trainer's plain samples)."""
    task = self.config.score_vae.task
    if self.stage == "prior" or task == "generate":
      return None
    from lsgm_jax import data
    from lsgm_jax.evaluation import manipulations
    sv = self.config.score_vae
    n = int(sv.num_images) if task == "reconstruct" else 2 * int(sv.interpolate_pairs)
    held_out = next(data.make_eval_iterator(self.config.data, global_batch_size=n))
    x = jnp.asarray(held_out["x"][:n])
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 4_000_037)
    params, model_state = state.ema_params, state.model_state
    os.makedirs(out_dir, exist_ok=True)
    clip = (lambda a: np.clip(np.asarray(self.to_unit(a)), 0.0, 1.0))
    if task == "reconstruct":
      recon, info = jax.jit(self.reconstruct_with_info)(params, model_state, x, rng)
      metrics = jax.jit(self.reconstruction_metrics)(x, recon)
      info = {k: float(v) for k, v in info.items()}
      info.update({k: float(jnp.mean(v)) for k, v in metrics.items()})
      info["num_images"] = n
      # Rows of up to 8 originals, each above its reconstructions.
      cols = min(n, 8)
      chunks = [(clip(x)[i:i + cols], clip(recon)[i:i + cols]) for i in range(0, n, cols)]
      pad = lambda a: np.concatenate(  # noqa: E731
          [a, np.ones((cols - len(a),) + a.shape[1:], a.dtype)]) if len(a) < cols else a
      rows = np.stack([pad(a) for pair in chunks for a in pair])
      np.savez(os.path.join(out_dir, "reconstruct.npz"), originals=np.asarray(x),
               reconstructions=np.asarray(recon))
    else:
      steps, pairs = int(sv.interpolate_steps), int(sv.interpolate_pairs)

      def interpolate(params, model_state, x, rng):
        z = self.encode_posterior(params, x, rng)
        za, zb = z[:pairs], z[pairs:]
        w = jnp.linspace(0.0, 1.0, steps)[:, None, None]
        zs = (1.0 - w) * za[None] + w * zb[None]  # [steps, pairs, latent]
        # The same sampler key at every step of a path: only z changes along it.
        decode = lambda zz: self.decode_latent(params, model_state, zz,  # noqa: E731
                                               jax.random.fold_in(rng, 1))
        images, info = jax.vmap(decode)(zs)
        return images, jax.tree.map(jnp.mean, info)

      images, info = jax.jit(interpolate)(params, model_state, x, rng)
      info = {k: float(v) for k, v in info.items()}
      info["num_images"] = steps * pairs
      path = np.swapaxes(clip(images), 0, 1)  # [pairs, steps, ...]
      rows = np.concatenate([clip(x[:pairs])[:, None], path, clip(x[pairs:])[:, None]], 1)
      np.savez(os.path.join(out_dir, "interpolate.npz"), images=rows)
    manipulations.save_rows(rows, os.path.join(out_dir, f"{task}.png"), centered=False)
    with open(os.path.join(out_dir, "info.json"), "w") as f:
      json.dump(info, f, indent=2)
    return info
