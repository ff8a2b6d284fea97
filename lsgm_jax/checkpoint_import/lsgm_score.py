"""The score model ("dae") of an NVlabs/LSGM joint-stage checkpoint -> ``params["score"]``.

The reference's latent NCSN++ (``score_sde/ncsnpp.py``) keeps its layers in one
``all_modules`` ModuleList, appended in forward order; ``models/ncsnpp.py`` here names the
same layers. Walked in that order (LSGM's settings: BigGAN residual blocks, no input /
output pyramid, positional time embedding):

  0, 1                        time MLP ``nn.Linear``      -> ``temb_0``, ``temb_1``
  2                           input conv                   -> ``conv_in``
  per level: blocks (+ attn at res 16), a down block       -> ``down_{l}_block_{i}`` ...
  middle: block, attn, block                               -> ``mid_block_0`` ...
  per level (top first): blocks + 1, attn, an up block     -> ``up_{l}_block_{i}`` ...
  GroupNorm, conv                                          -> ``norm_out``, ``conv_out``

``ResnetBlockBigGANpp``: ``GroupNorm_0/1`` -> ``norm_0/1``, ``Conv_0/1`` -> ``conv_0/1``,
``Dense_0`` -> ``temb_proj``, ``Conv_2`` -> ``shortcut``; ``AttnBlockpp``: ``GroupNorm_0``
-> ``norm``, ``NIN_0..3`` (``W`` [in, out], ``b``) -> ``q``, ``k``, ``v``, ``out``.
``mixing_logit`` [1, C, 1, 1] -> [C].

EMA (``util/ema.py``): the wrapped optimizer's ``state[i]["ema"]`` for the i-th entry of
``param_groups[*]["params"]``, which indexes ``dae.parameters()`` -- the state-dict order
here (the model has no buffers). Spectral regularisation (``dae_sn_calculator``, plain
``nn.Conv2d`` layers) goes to ``model_state["score_sr"]`` when the config keeps it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from lsgm_jax.checkpoint_import import ImportMismatchError, check_tree, unconsumed
from lsgm_jax.checkpoint_import import lsgm_format, lsgm_optimizer


@dataclasses.dataclass
class ScoreImport:
  params: dict
  model_state: dict
  ema: dict | None
  description: str
  optimizer: lsgm_optimizer.Partition  # the dae_optimizer's moments, for lsgm_optimizer


def _ref_channel_mult(dataset: str, num_scales: int) -> tuple[int, ...] | None:
  """util/utils.py ``get_channel_multiplier`` (None for a dataset it does not know)."""
  if dataset in ("cifar10", "omniglot"):
    mult = (1, 1, 1)
  elif dataset in ("celeba_256", "ffhq", "lsun_church_256"):
    mult = {3: (1, 1, 1), 4: (1, 2, 2, 2), 5: (1, 1, 2, 2, 2)}.get(num_scales)
  elif dataset == "mnist":
    mult = (1, 1)
  else:
    return None
  return None if mult is None else tuple(mult[:num_scales])


def check_score_args(args: dict[str, Any], net: Any, what: str) -> None:
  """One line naming the score-model fields where the file's args and the config differ."""
  ours = {"num_channels_dae": net.nf, "num_scales_dae": len(net.ch_mult),
          "num_cell_per_scale_dae": net.num_res_blocks,
          "embedding_dim": net.embedding_dim or net.nf, "embedding_type": net.embedding_type,
          "embedding_scale": float(net.time_scale), "fir": net.fir,
          "progressive": net.progressive, "progressive_input": net.progressive_input,
          "progressive_combine": net.progressive_combine,
          "mixed_prediction": net.mixing_logit_init is not None}
  diffs = []
  for field, want in ours.items():
    got = args.get(field, "missing")
    same = (isinstance(got, (int, float)) and float(got) == want) if isinstance(
        want, float) else got == want
    if not same:
      diffs.append(f"{field} (file {got!r}, config {want!r})")
  mult = _ref_channel_mult(str(args.get("dataset", "")), int(args.get("num_scales_dae", 0)))
  if mult is not None and mult != tuple(net.ch_mult):
    diffs.append(f"ch_mult (file dataset gives {mult}, config {tuple(net.ch_mult)})")
  for field, ref in (("attn_resolutions", (16,)), ("resblock_type", "biggan"),
                     ("skip_rescale", True)):
    if (tuple(getattr(net, field)) if field == "attn_resolutions" else getattr(net, field)) != ref:
      diffs.append(f"config.model.{field} (the reference's score model has {ref!r})")
  if diffs:
    raise ImportMismatchError(f"{what}: the file's args do not match the config's score "
                              "model: " + "; ".join(diffs))


def score_plan(net: Any, latent_size: int) -> list[tuple[str, tuple[str, ...], str]]:
  """(reference key, project path, kind) for every tensor, in ``all_modules`` order."""
  out: list[tuple[str, tuple[str, ...], str]] = [("mixing_logit", ("mixing_logit",), "logit")]
  n = [0]

  def module() -> str:
    n[0] += 1
    return f"all_modules.{n[0] - 1}"

  def linear(ref, path):
    out.extend([(f"{ref}.weight", path + ("kernel",), "dense"),
                (f"{ref}.bias", path + ("bias",), "copy")])

  def conv(ref, path):
    out.extend([(f"{ref}.weight", path + ("kernel",), "conv"),
                (f"{ref}.bias", path + ("bias",), "copy")])

  def norm(ref, path):
    out.extend([(f"{ref}.weight", path + ("scale",), "copy"),
                (f"{ref}.bias", path + ("bias",), "copy")])

  def block(name, shortcut):
    ref = module()
    norm(f"{ref}.GroupNorm_0", (name, "norm_0"))
    conv(f"{ref}.Conv_0", (name, "conv_0"))
    linear(f"{ref}.Dense_0", (name, "temb_proj"))
    norm(f"{ref}.GroupNorm_1", (name, "norm_1"))
    conv(f"{ref}.Conv_1", (name, "conv_1"))
    if shortcut:
      conv(f"{ref}.Conv_2", (name, "shortcut"))

  def attn(name):
    ref = module()
    norm(f"{ref}.GroupNorm_0", (name, "norm"))
    for i, part in enumerate(("q", "k", "v", "out")):
      out.extend([(f"{ref}.NIN_{i}.W", (name, part, "dense", "kernel"), "copy"),
                  (f"{ref}.NIN_{i}.b", (name, part, "dense", "bias"), "copy")])

  linear(module(), ("temb_0",))
  linear(module(), ("temb_1",))
  conv(module(), ("conv_in",))
  chans = [net.nf * m for m in net.ch_mult]
  levels = len(chans)
  in_ch, hs_c = net.nf, [net.nf]
  for level in range(levels):
    for i in range(net.num_res_blocks):
      block(f"down_{level}_block_{i}", in_ch != chans[level])
      in_ch = chans[level]
      if latent_size // 2 ** level in net.attn_resolutions:
        attn(f"down_{level}_attn_{i}")
      hs_c.append(in_ch)
    if level != levels - 1:
      block(f"down_{level}_resample", True)
      hs_c.append(in_ch)
  block("mid_block_0", False)
  attn("mid_attn")
  block("mid_block_1", False)
  for level in reversed(range(levels)):
    for i in range(net.num_res_blocks + 1):
      block(f"up_{level}_block_{i}", in_ch + hs_c.pop() != chans[level])
      in_ch = chans[level]
    if latent_size // 2 ** level in net.attn_resolutions:
      attn(f"up_{level}_attn")
    if level != 0:
      block(f"up_{level}_resample", True)
  norm(module(), ("norm_out",))
  conv(module(), ("conv_out",))
  return out


def _convert(kind: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if kind == "logit":
    return value.reshape(-1).astype(np.float32, copy=False)
  return lsgm_format._convert_leaf(kind, value)  # noqa: SLF001 (same package)


def _map(sd: dict[str, np.ndarray], plan, what: str) -> dict:
  tree: dict = {}
  for key, path, kind in plan:
    if key in sd:
      lsgm_format._set(tree, path, _convert(kind, sd[key]))  # noqa: SLF001
  unconsumed(sd, {k for k, _, _ in plan if k in sd}, what)
  return tree


def _ema(opt: Any, sd: dict[str, np.ndarray], plan, what: str) -> dict | None:
  """The EMA tree from the wrapped optimizer's state, or None when it holds none."""
  # dae.parameters() order: the state-dict order (the model has no buffers).
  found = lsgm_optimizer.entries_by_name(opt, list(sd), what)
  if found is None or not any(isinstance(e, dict) and "ema" in e for e in found[0].values()):
    return None
  ema_sd = {}
  for idx, (name, entry) in enumerate(found[0].items()):
    if not isinstance(entry, dict) or "ema" not in entry:
      raise ImportMismatchError(f"{what}: no EMA for parameter {idx} ({name})")
    ema_sd[name] = entry["ema"]
  return _map(ema_sd, plan, f"{what} (EMA)")


def _score_sr(sn_state: Any, plan, params: dict, target_sr: dict, what: str) -> dict:
  """``model_state["score_sr"]`` (u, v per conv kernel) from ``dae_sn_calculator``."""
  from lsgm_jax.objectives import spectral_regularization as sr

  kernels = [(key, path) for key, path, kind in plan if kind == "conv"]
  names = {path: jax.tree_util.keystr(tuple(jax.tree_util.DictKey(p) for p in path))
           for _, path in kernels}
  sr_u = sn_state.get("sr_u") if isinstance(sn_state, dict) else None
  sr_v = sn_state.get("sr_v") if isinstance(sn_state, dict) else None
  if not (sr_u and sr_v):  # 40 iterations from a fixed start, as the reference's first call
    import jax.numpy as jnp
    return jax.tree.map(np.asarray, sr.init_power_vectors(
        jax.tree.map(jnp.asarray, params), jax.random.PRNGKey(0), 40))
  sr_u = {tuple(int(d) for d in k): u for k, u in sr_u.items()}
  sr_v = {tuple(int(d) for d in k): v for k, v in sr_v.items()}
  out, counters = {}, {}
  for _, path in kernels:
    kh, kw, i, o = np.shape(lsgm_format._get(params, path))  # noqa: SLF001
    shape = (o, kh * kw * i)
    n = counters.get(shape, 0)
    counters[shape] = n + 1
    if shape not in sr_u or n >= np.shape(sr_u[shape])[0]:
      raise ImportMismatchError(f"{what}: no spectral vector {n} for weights of shape {shape}")
    v = np.asarray(sr_v[shape][n]).reshape(i, kh, kw)
    out[names[path]] = {"u": np.asarray(sr_u[shape][n], np.float32),
                        "v": np.transpose(v, (1, 2, 0)).reshape(-1).astype(np.float32)}
  check_tree(target_sr, out, f"{what} (spectral vectors)")
  return out


def convert_score(obj: dict, method: Any, target: Any, path: str) -> ScoreImport:
  """The score model, its EMA and spectral vectors of a joint-stage file.

  Args:
    obj: the file's checkpoint dict (``dae_state_dict``, ``dae_optimizer``, ...).
    method: the config's ``methods.lsgm.LSGM`` (stage ``train_vada``).
    target: the abstract train state.
    path: the file, for messages.
  """
  net = method.score_model
  if net.resblock_type != "biggan" or net.progressive != "none" or \
      net.progressive_input != "none" or net.embedding_type != "positional":
    raise ImportMismatchError(
        f"{path}: importing the LSGM score model supports BigGAN blocks without input / "
        "output pyramids and a positional embedding (the README models); config.model has "
        f"resblock_type={net.resblock_type!r}, progressive={net.progressive!r}, "
        f"progressive_input={net.progressive_input!r}, embedding_type={net.embedding_type!r}")
  sd = lsgm_format.strip_module(lsgm_format._tensors(obj["dae_state_dict"]))  # noqa: SLF001
  plan = score_plan(net, method.latent_shape[0])
  what = f"{path} dae_state_dict"
  params = _map(sd, plan, what)
  check_tree(target.params["score"], params, what)
  ema = _ema(obj.get("dae_optimizer"), sd, plan, f"{path} dae_optimizer")
  model_state = {"score": {}}
  if "score_sr" in target.model_state:
    model_state["score_sr"] = _score_sr(obj.get("dae_sn_calculator"), plan, params,
                                        target.model_state["score_sr"], f"{path} dae_sn_calculator")
  kind = "the optimizer's EMA" if ema is not None else "no EMA in the file"
  dae_optim = method.config.lsgm.dae_optim.optimizer
  partition = lsgm_optimizer.Partition(
      obj.get("dae_optimizer"), sd, list(sd), lambda m, w: _map(m, plan, w), dae_optim,
      "config.lsgm.dae_optim.optimizer")
  return ScoreImport(params, model_state, ema, f"score model with {kind}", partition)
