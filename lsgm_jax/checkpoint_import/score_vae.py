"""Format ``score_vae``: the ScoreVAE paper code's PyTorch Lightning ``.ckpt`` files
(GBATZOLIS/conditional_score_diffusion, branch ``scoreVAE``, b188acd3) -> a
``score_vae`` config (configs/score_vae_cifar10.py, score_vae_celeba64.py).

A Lightning checkpoint is ``torch.save`` of ``{"epoch", "global_step",
"pytorch-lightning_version", "state_dict", "optimizer_states", "lr_schedulers",
"callbacks", "hyper_parameters", ...}``, read here without torch or Lightning
(``models.autoencoder_convert.read_torch_file``; the pickled ``ml_collections`` config
in ``hyper_parameters`` becomes an inert placeholder). Two modules write them:

* ``lightning_modules/EncoderOnlyPretrainedScoreVAEmodel.py`` (the paper's encoder
  stage): ``state_dict`` holds ``encoder.*`` (``models/encoder.py``:
  ``time_dependent_simple_encoder`` -- ``net.{0,2,..}`` convolutions and ``linear`` -- or
  ``time_dependent_DDPM_encoder`` -- ``all_modules.<i>``) and the frozen prior
  ``unconditional_score_model.*`` (``models/ddpm.py`` ``DDPM``, ``all_modules.<i>``,
  loaded from the prior's checkpoint with its raw weights). Its one optimizer is Adam
  over ``encoder.parameters()``, wrapped by ``lightning_callbacks/ema.py``'s
  ``EMAOptimizer``, whose ``state_dict`` is ``{"opt": Adam.state_dict(), "ema": [the
  EMA of each encoder parameter, in order], "current_step", "decay", "every_n_steps"}``.
  -> stage ``encoder``: ``params["encoder"]``, EMA -> ``ema_params["encoder"]``, Adam
  moments -> the optax Adam state, the prior -> ``model_state["prior"]["params"]``.
* ``lightning_modules/BaseSdeGenerativeModel.py`` (the prior stage): ``score_model.*``
  (the DDPM U-Net) with the same EMA optimizer wrapper. -> stage ``prior``:
  ``params["prior"]`` (and its EMA). An encoder-stage file also imports into a
  ``prior`` config (its frozen prior, no EMA).

Tensor layouts: the DDPM U-Net and the DDPM encoder keep score_sde's module list, so
each ``all_modules`` index is named by replaying the constructor (``ddpm_layout``) with
the flax auto-names of ``models/unet.py`` / ``models/encoders.py`` and mapped with
``checkpoint_import.ncsnpp_torch``'s child tables and leaf rules (OIHW -> HWIO,
Linear transposed, GroupNorm weight -> scale, NIN W as is). The linear layer after
``nn.Flatten`` reads torch's (C, H, W) order; its rows are permuted to flax's
(H, W, C) order (the simple encoder's appended time row stays last).

A ScoreVAE prior from another codebase (score_sde NCSN++ / DDPM++) is imported with
format ``score_sde`` into an ``sgm`` workdir and named by
``config.score_vae.prior_checkpoint`` (the encoder stage accepts any ``sgm`` prior).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from lsgm_jax.checkpoint_import import (ImportedCheckpoint, ImportMismatchError, check_tree,
                                        in_target_layout, unconsumed)
from lsgm_jax.checkpoint_import import ncsnpp_torch as nt
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError, read_torch_file

ENCODER, PRIOR, STANDALONE_PRIOR = "encoder.", "unconditional_score_model.", "score_model."


def ddpm_layout(ch_mult: Sequence[int], num_res_blocks: int,
                attn_resolutions: Sequence[int], image_size: int, *, encoder: bool = False,
                time_conditional: bool = True) -> list[tuple[str, str]]:
  """(flax module name, kind) of each ``all_modules`` entry of the paper code's
  ``models/ddpm.py`` ``DDPM`` (or, ``encoder=True``, ``models/encoder.py``
  ``DDPMEncoder``: the down path and middle block, ``Flatten``, ``Linear``); the names
  are the flax auto-names ``UNet`` / ``DDPMEncoder`` give the same layers."""
  counters: dict[str, int] = {}

  def auto(cls: str) -> str:
    counters[cls] = counters.get(cls, 0) + 1
    return f"{cls}_{counters[cls] - 1}"

  layout = [("temb_0", "dense"), ("temb_1", "dense")] if time_conditional else []
  layout.append(("conv_in", "conv"))
  levels = len(ch_mult)
  for level in range(levels):
    for _ in range(num_res_blocks):
      layout.append((auto("ResnetBlockDDPM"), "resblock"))
      if image_size // 2 ** level in attn_resolutions:
        layout.append((auto("AttnBlock"), "attn"))
    if level != levels - 1:
      layout.append((auto("Downsample"), "resample"))
  layout += [(auto("ResnetBlockDDPM"), "resblock"), (auto("AttnBlock"), "attn"),
             (auto("ResnetBlockDDPM"), "resblock")]
  if encoder:
    return layout + [("flatten", "none"), ("linear", "flat_dense")]
  for level in reversed(range(levels)):
    for _ in range(num_res_blocks + 1):
      layout.append((auto("ResnetBlockDDPM"), "resblock"))
    if image_size // 2 ** level in attn_resolutions:
      layout.append((auto("AttnBlock"), "attn"))
    if level != 0:
      layout.append((auto("Upsample"), "resample"))
  return layout + [("norm_out", "groupnorm"), ("conv_out", "conv")]


def flat_linear(weight: np.ndarray, channels: int, extra: int = 0) -> np.ndarray:
  """A torch ``Linear`` after ``nn.Flatten`` of NCHW features (plus ``extra`` appended
  inputs) -> the flax kernel over NHWC-flattened features: rows in (H, W, C) order."""
  out, inputs = weight.shape
  side = math.isqrt((inputs - extra) // channels)
  if side * side * channels + extra != inputs:
    raise ImportMismatchError(f"a flattened linear layer of {inputs} inputs does not fit "
                              f"{channels} channels")
  image = weight[:, :inputs - extra].reshape(out, channels, side, side)
  rows = image.transpose(2, 3, 1, 0).reshape(side * side * channels, out)
  return np.concatenate([rows, weight[:, inputs - extra:].T], axis=0)


def _set(tree: dict, path: Sequence[str], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def map_modules(state_dict: Mapping[str, np.ndarray], layout: Sequence[tuple[str, str]],
                flat_channels: int, target: Any, what: str) -> dict:
  """Our params tree of an ``all_modules.<i>`` state dict (every tensor placed, every
  target leaf filled, or one line)."""
  out: dict = {}
  consumed = set()
  for key, value in state_dict.items():
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "all_modules" or not parts[1].isdigit() or \
        int(parts[1]) >= len(layout):
      continue
    name, kind = layout[int(parts[1])]
    child, leaf = ".".join(parts[2:-1]), parts[-1]
    if kind == "flat_dense" and not child:
      if leaf == "weight":
        _set(out, (name, "kernel"), flat_linear(value, flat_channels))
      else:
        _set(out, (name, "bias"), value)
      consumed.add(key)
      continue
    # pylint: disable=protected-access  (ncsnpp_torch's tables, as score_sde.py uses them)
    sub = nt._CHILDREN.get(kind, {}).get(child)
    mapped = nt._flax_leaf(leaf, value) if sub is not None else None
    if mapped is None:
      continue
    _set(out, (name,) + sub + (mapped[0],), mapped[1])
    consumed.add(key)
  unconsumed(state_dict, consumed, what)
  check_tree(target, out, what)
  return out


def map_simple_encoder(state_dict: Mapping[str, np.ndarray], target: Any,
                       time_conditional: bool, what: str) -> dict:
  """``time_dependent_simple_encoder``: ``net.<2i>`` -> ``conv_i``; ``linear`` -> the
  flax ``linear`` with NHWC rows and the raw-t row last."""
  out: dict = {}
  consumed = set()
  convs = sorted({int(k.split(".")[1]) for k in state_dict
                  if k.startswith("net.") and k.split(".")[1].isdigit()})
  last_channels = None
  for i, index in enumerate(convs):
    for leaf in ("weight", "bias"):
      key = f"net.{index}.{leaf}"
      if key in state_dict:
        name, value = nt._flax_leaf(leaf, state_dict[key])  # pylint: disable=protected-access
        _set(out, (f"conv_{i}", name), value)
        consumed.add(key)
        if leaf == "weight":
          last_channels = state_dict[key].shape[0]
  if "linear.weight" in state_dict and last_channels:
    out["linear"] = {"kernel": flat_linear(state_dict["linear.weight"], last_channels,
                                           int(time_conditional)),
                     "bias": state_dict.get("linear.bias")}
    consumed |= {"linear.weight", "linear.bias"}
  unconsumed(state_dict, consumed, what)
  check_tree(target, out, what)
  return out


def _sub(state_dict: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items() if k.startswith(prefix)}


def _ema_optimizer(obj: Mapping[str, Any]) -> tuple[Any, Any]:
  """(Adam state dict, EMA list) of the first optimizer (``EMAOptimizer`` or plain)."""
  states = obj.get("optimizer_states")
  if not isinstance(states, (list, tuple)) or not states or not isinstance(states[0], Mapping):
    return None, None
  first = states[0]
  if "opt" in first:
    return first.get("opt"), first.get("ema")
  return first, None


def _in_order(sub: Mapping[str, np.ndarray], values: Sequence[Any], what: str
              ) -> dict[str, np.ndarray]:
  """A list over ``module.parameters()`` as a state dict of the same keys (the modules
  have no buffers, so parameters() is the state dict's order)."""
  keys = list(sub)
  if len(values) != len(keys):
    raise ImportMismatchError(f"{what} has {len(values)} tensors but the module has "
                              f"{len(keys)} parameters")
  out = {}
  for key, value in zip(keys, values):
    value = np.asarray(value)
    if value.shape != sub[key].shape:
      raise ImportMismatchError(f"{what}: the entry for {key} has shape {value.shape}, the "
                                f"parameter {sub[key].shape}")
    out[key] = value
  return out


def _adam(opt: Any, sub: Mapping[str, np.ndarray], what: str):
  """(exp_avg, exp_avg_sq, step) of a torch Adam over exactly ``sub``'s parameters."""
  if not isinstance(opt, Mapping) or not isinstance(opt.get("state"), Mapping):
    return None
  groups = opt.get("param_groups")
  if not isinstance(groups, (list, tuple)) or len(groups) != 1 or \
      list(groups[0].get("params", [])) != list(range(len(sub))) or groups[0].get("amsgrad"):
    return None
  entries = [opt["state"].get(i) for i in range(len(sub))]
  if not all(isinstance(e, Mapping) and "exp_avg" in e for e in entries):
    return None
  mu = _in_order(sub, [e["exp_avg"] for e in entries], f"{what} exp_avg")
  nu = _in_order(sub, [e["exp_avg_sq"] for e in entries], f"{what} exp_avg_sq")
  return mu, nu, int(np.asarray(entries[0].get("step", 0)))


class _Mapper:
  """Maps the paper code's encoder / prior state dicts for one config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    model = config.model
    self.prior_layout = ddpm_layout(tuple(model.ch_mult), int(model.num_res_blocks),
                                    tuple(model.attn_resolutions), int(config.data.image_size))
    self.prior_channels = int(model.nf) * int(tuple(model.ch_mult)[0])

  def prior(self, sd: Mapping[str, np.ndarray], target: Any, what: str) -> dict:
    return map_modules(sd, self.prior_layout, self.prior_channels, target, what)

  def encoder(self, sd: Mapping[str, np.ndarray], target: Any, what: str) -> dict:
    enc = self.config.score_vae.encoder
    if enc.name == "simple":
      return map_simple_encoder(sd, target, True, what)
    levels = len(tuple(enc.ch_mult))
    layout = ddpm_layout(tuple(enc.ch_mult), int(enc.num_res_blocks),
                         tuple(enc.attn_resolutions), int(self.config.data.image_size),
                         encoder=True)
    channels = int(enc.nf) * int(tuple(enc.ch_mult)[levels - 1])
    return map_modules(sd, layout, channels, target, what)


def stored_config(obj: Mapping[str, Any]) -> dict | None:
  """The pickled ``ml_collections`` config of ``hyper_parameters["config"]`` (inert
  placeholders of the restricted unpickler) as nested dicts; None if absent."""
  def plain(node):
    state = getattr(node, "pickled_state", None)
    if isinstance(state, Mapping) and isinstance(state.get("_fields"), Mapping):
      return {k: plain(v) for k, v in state["_fields"].items()}
    if isinstance(state, Mapping) and "_value" in state:  # a FieldReference
      return plain(state["_value"])
    return node
  hp = obj.get("hyper_parameters")
  cfg = plain(hp.get("config")) if isinstance(hp, Mapping) else None
  return cfg if isinstance(cfg, dict) else None


def check_stored_config(stored: Mapping[str, Any], config: ml_collections.ConfigDict,
                        stage: str, path: str) -> None:
  """One line naming the settings the file's config stores differently from ``config``
  that no tensor shape reveals (the SDE, the data range, the image size, the encoder's
  latent size); the KL weight (a training setting) only warns."""
  model, data_ = stored.get("model", {}), stored.get("data", {})
  pairs = [("model.beta_min", model.get("beta_min"), "sde.beta_min", config.sde.beta_min),
           ("model.beta_max", model.get("beta_max"), "sde.beta_max", config.sde.beta_max),
           ("data.centered", data_.get("centered"), "data.centered", config.data.centered),
           ("data.image_size", data_.get("image_size"), "data.image_size",
            config.data.image_size)]
  if stage == "encoder":
    latent = model.get("encoder_latent_dim", data_.get("latent_dim"))
    pairs.append(("model.encoder_latent_dim", latent, "score_vae.latent_dim",
                  config.score_vae.latent_dim))
  differ = []
  for theirs, value, ours, mine in pairs:
    if value is None or isinstance(value, Mapping):
      continue
    same = (abs(float(value) - float(mine)) <= 1e-9 * max(1.0, abs(float(mine)))
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else value == mine)
    if not same:
      differ.append(f"{theirs}={value} (--config.{ours}={mine})")
  if differ:
    raise ImportMismatchError(f"{path}: the file's stored config differs from this one: "
                              + "; ".join(differ))
  kl = stored.get("training", {}).get("kl_weight")
  if stage == "encoder" and isinstance(kl, (int, float)) and \
      abs(float(kl) - float(config.score_vae.beta)) > 1e-12:
    logging.warning("the file was trained with kl_weight %s, config.score_vae.beta is %s",
                    kl, config.score_vae.beta)


def check_config(config: ml_collections.ConfigDict) -> None:
  """One line unless ``config`` is a ScoreVAE prior / encoder stage with the DDPM prior."""
  if config.method != "score_vae":
    raise ImportMismatchError(
        "score_vae files hold the ScoreVAE encoder and its prior: use a config with "
        f"method='score_vae' (got method={config.method!r})")
  if config.score_vae.stage not in ("prior", "encoder"):
    raise ImportMismatchError(
        "score_vae imports fill the 'prior' or 'encoder' stage (the paper code's "
        f"EncoderOnlyPretrainedScoreVAEmodel / prior files); got config.score_vae.stage="
        f"{config.score_vae.stage!r}")
  if config.model.name != "unet":
    raise ImportMismatchError(
        "the ScoreVAE paper code's prior is the DDPM U-Net (models/ddpm.py): use "
        f"config.model.name='unet' (got {config.model.name!r})")


@in_target_layout
def convert(path: str, config: ml_collections.ConfigDict, target: Any) -> ImportedCheckpoint:
  """Reads a ScoreVAE Lightning ``.ckpt`` (no torch, no Lightning).

  Args:
    path: the ``.ckpt`` file.
    config: a ``score_vae`` config of stage ``encoder`` or ``prior``.
    target: ``jax.eval_shape`` of the method's ``init_state``.

  Returns:
    The ``ImportedCheckpoint`` (see the module docstring for what goes where).

  Raises:
    CheckpointFormatError: not a Lightning checkpoint of the paper code.
    ImportMismatchError: the file does not fit the config (one line).
  """
  check_config(config)
  obj = read_torch_file(path)
  if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
    keys = sorted(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointFormatError(f"{path}: not a PyTorch Lightning checkpoint (no "
                                f"'state_dict'; found {keys})")
  sd = obj["state_dict"]
  stage = config.score_vae.stage
  stored = stored_config(obj)
  if stored is not None:
    check_stored_config(stored, config, stage, path)
  encoder_sd, prior_sd = _sub(sd, ENCODER), _sub(sd, PRIOR)
  standalone = _sub(sd, STANDALONE_PRIOR)
  mapper = _Mapper(config)
  step = int(np.asarray(obj.get("global_step", 0)))
  opt, ema = _ema_optimizer(obj)
  other = sorted(k for k in sd if not k.startswith((ENCODER, PRIOR, STANDALONE_PRIOR)))
  if other:
    raise ImportMismatchError(f"{path}: {len(other)} tensors of modules the ScoreVAE "
                              f"encoder stage does not have: {', '.join(other[:4])}")
  opt_state, ema_params, notes = None, None, []
  if stage == "encoder":
    if not encoder_sd or not prior_sd:
      raise ImportMismatchError(
          f"{path} holds no encoder and frozen prior ('encoder.*', "
          "'unconditional_score_model.*'): an encoder-stage config needs the paper "
          "code's EncoderOnlyPretrainedScoreVAEmodel checkpoint")
    params = {"encoder": mapper.encoder(encoder_sd, target.params["encoder"],
                                        "score_vae 'encoder'")}
    prior = mapper.prior(prior_sd, target.model_state["prior"]["params"],
                         "score_vae 'unconditional_score_model'")
    model_state = {"prior": {"params": prior, "state": {}}}
    trained = encoder_sd
    wrap = lambda tree: {"encoder": tree}  # noqa: E731
    remap = lambda s, what: mapper.encoder(s, target.params["encoder"], what)  # noqa: E731
  else:
    source = standalone or prior_sd
    if not source:
      raise ImportMismatchError(f"{path} holds no DDPM prior ('score_model.*' or "
                                "'unconditional_score_model.*')")
    params = {"prior": mapper.prior(source, target.params["prior"], "score_vae prior")}
    model_state = {"prior": {}}
    trained = standalone  # an encoder file's optimizer and EMA are the encoder's
    wrap = lambda tree: {"prior": tree}  # noqa: E731
    remap = lambda s, what: mapper.prior(s, target.params["prior"], what)  # noqa: E731
    if not standalone:
      ema, opt = None, None
      notes.append("the frozen prior of an encoder-stage file")
  if ema is not None and trained:
    ema_params = wrap(remap(_in_order(trained, ema, "the EMA optimizer's 'ema' list"),
                            "score_vae EMA"))
    notes.append("EMA -> ema_params")
  moments = _adam(opt, trained, "score_vae Adam") if trained else None
  if moments is not None and config.optim.optimizer in ("adam", "adamw"):
    mu, nu, count = moments
    opt_state = nt.optax_adam_state(target.opt_state, wrap(remap(mu, "score_vae exp_avg")),
                                    wrap(remap(nu, "score_vae exp_avg_sq")), count, step)
    if opt_state is not None:
      check_tree(target.opt_state, opt_state, "score_vae Adam state")
      notes.append(f"Adam moments (step {count})")
  if opt_state is None:
    logging.warning("score_vae import: fresh optimizer state (the file's optimizer does "
                    "not map onto config.optim)")
    notes.append("fresh optimizer state")
  check_tree(target.model_state, model_state, "score_vae model state")
  description = f"ScoreVAE Lightning step {step} -> stage {stage}: " + ", ".join(notes)
  return ImportedCheckpoint(params=params, ema_params=ema_params, model_state=model_state,
                            step=step, opt_state=opt_state, description=description)
