"""NVlabs/LSGM checkpoints -> this project's LSGM train state (``--mode=import``).

Two kinds of file, both ``torch.save`` dicts read without torch
(``models.autoencoder_convert.read_torch_file``):

* Stage 1, ``train_vae.py`` (``checkpoint.pt`` / ``checkpoint_epoch_N.pt``): ``args`` (the
  argparse Namespace), ``vae_state_dict``, ``vae_optimizer`` (Adamax), ``vae_scheduler``,
  ``sn_calculator`` (the spectral-regularisation power-iteration vectors), ``grad_scalar``,
  ``epoch``, ``global_step``, ``best_score``. It pairs with a ``lsgm.stage='train_vae'``
  config (``configs/lsgm_cifar.py:*_vae``, ``lsgm_mnist.py:vae``, ...).
* Joint stage, ``train_vada.py`` (``checkpoint.pt``, or ``checkpoint_fid.pt`` /
  ``checkpoint_nll.pt`` written while the EMA weights were swapped in): also
  ``dae_state_dict`` (the NCSN++ score model), ``dae_optimizer`` (FusedAdam wrapped by
  ``util/ema.py``: the score model's EMA is ``state[i]['ema']`` in ``dae.parameters()``
  order), ``vae_sn_calculator`` / ``dae_sn_calculator``. It pairs with a
  ``lsgm.stage='train_vada'`` config; the score model's mapping is in
  ``checkpoint_import.lsgm_score``.

The NVAE mapping walks the reference's construction order (``nvae.py``: ``init_*`` and
``layers/cells.py``, ``layers/neural_operations.py``, ``layers/neural_ar_operations.py``)
next to this project's module names (``models/nvae.py``). Per tensor:

* weight-normalised convs (``Conv2D`` / ``ARConv2d``): ``weight`` OIHW -> ``kernel`` HWIO
  (the raw, unnormalised ``V``), ``log_weight_norm`` [O, 1, 1, 1] -> ``log_gain`` [O]; both
  use ``W = exp(g) V / (||V|| + 1e-5)`` (``normalize_weight_jit`` and ``nvae_layers.WNConv``).
  Plain convs of the MBConv cells register their weight twice (``weight_normalized`` is
  the Parameter itself); the alias is consumed.
* BatchNorm (``SyncBatchNormSwish`` / ``SyncBatchNorm.bn``): ``weight`` / ``bias`` ->
  ``scale`` / ``bias``; ``running_mean`` / ``running_var`` -> ``model_state`` ``batch_stats``
  ``mean`` / ``var``; ``num_batches_tracked`` has no counterpart (flax's momentum is fixed).
* Squeeze-excitation ``Linear`` -> ``Dense`` (kernel transposed).
* ``prior_ftr0`` [C, H, W] -> [H, W, C].
* ``--progressive_input_vae input_skip`` (the CelebA-HQ-256 models): each
  ``progressive_input_cells.{s}.conv`` (BN-Swish + stride-2 3x3 conv) goes to
  ``enc_input_skip_{s}/conv`` (``nvae_layers.InputSkipCombiner``); the file's flag must
  equal ``config.lsgm.vae.progressive_input_vae``.
* Spectral regularisation (``util/sr_utils.py``): the reference stacks ``u`` / ``v`` per
  weight shape ``[O, I*kh*kw]`` in ``named_modules`` order of the convs; each goes to that
  conv's ``spectral`` ``u`` / ``v`` (``v`` reordered from (I, kh, kw) to (kh, kw, I)). A
  file without them (``checkpoint_fid.pt``) gets 40 power iterations (the reference's
  first call) from a fixed start on the imported weights.

Optimizer states (``vae_optimizer``, ``dae_optimizer``): their moments become the optax
state where the kinds agree (Adamax -> ``adamax``, Adam / FusedAdam -> ``adam`` /
``adamw``), indexed in ``parameters()`` order; exactly what maps and what does not is in
``checkpoint_import.lsgm_optimizer``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from absl import logging
import numpy as np

from lsgm_jax.checkpoint_import import (ImportedCheckpoint, ImportMismatchError, check_tree,
                                        in_target_layout, unconsumed)
from lsgm_jax.checkpoint_import import lsgm_optimizer
from lsgm_jax.models import autoencoder_convert
from lsgm_jax.models import nvae as nvae_lib
from lsgm_jax.models import nvae_layers

# util/utils.py override_architecture_fields: the reference's own list of NVAE
# architecture flags (plus use_se, which get_arch_cells reads).
ARCH_FIELDS = ("arch_instance", "num_nf", "num_latent_scales", "num_groups_per_scale",
               "num_latent_per_group", "num_channels_enc", "num_preprocess_blocks",
               "num_preprocess_cells", "num_cell_per_cond_enc", "num_channels_dec",
               "num_postprocess_blocks", "num_postprocess_cells", "num_cell_per_cond_dec",
               "decoder_dist", "num_x_bits", "log_sig_q_scale", "channel_mult", "use_se")
_REF_OPS = {"mconv_e6k5": "mconv_e6k5g0", "mconv_e3k5": "mconv_e3k5g0"}


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """One reference tensor: where it goes and how it is reshaped."""
  collection: str   # "params", "batch_stats" or "alias" (consumed, no destination)
  path: tuple[str, ...]
  kind: str         # "conv", "log_gain", "copy", "dense", "prior"


@dataclasses.dataclass(frozen=True)
class _Conv:
  """A conv of the reference (named_modules order) and its project path."""
  key: str
  path: tuple[str, ...]


class _Plan:
  """The reference key -> project leaf table of one NVAE, built in construction order."""

  def __init__(self):
    self.leaves: dict[str, _Leaf] = {}
    self.convs: list[_Conv] = []

  def conv(self, ref: str, path: tuple[str, ...], bias: bool, weight_norm: bool = True):
    self.convs.append(_Conv(f"{ref}.weight", path))
    self.leaves[f"{ref}.weight"] = _Leaf("params", path + ("kernel",), "conv")
    if bias:
      self.leaves[f"{ref}.bias"] = _Leaf("params", path + ("bias",), "copy")
    if weight_norm:
      self.leaves[f"{ref}.log_weight_norm"] = _Leaf("params", path + ("log_gain",), "log_gain")
    else:  # the Parameter registered again as ``weight_normalized`` (neural_operations.py)
      self.leaves[f"{ref}.weight_normalized"] = _Leaf("alias", path, "copy")

  def bn(self, ref: str, path: tuple[str, ...]):
    self.leaves[f"{ref}.weight"] = _Leaf("params", path + ("scale",), "copy")
    self.leaves[f"{ref}.bias"] = _Leaf("params", path + ("bias",), "copy")
    self.leaves[f"{ref}.running_mean"] = _Leaf("batch_stats", path + ("mean",), "copy")
    self.leaves[f"{ref}.running_var"] = _Leaf("batch_stats", path + ("var",), "copy")
    self.leaves[f"{ref}.num_batches_tracked"] = _Leaf("alias", path, "copy")

  def dense(self, ref: str, path: tuple[str, ...]):
    self.leaves[f"{ref}.weight"] = _Leaf("params", path + ("kernel",), "dense")
    self.leaves[f"{ref}.bias"] = _Leaf("params", path + ("bias",), "copy")

  def cell(self, ref: str, path: tuple[str, ...], cell_type: str, ops: tuple[str, ...],
           use_se: bool):
    """layers/cells.py ``Cell``: skip, ``_ops``, ``se``."""
    stride = nvae_layers.stride_for_cell_type(cell_type)
    if stride == 2:  # FactorizedReduce conv_1..4
      for i in range(4):
        self.conv(f"{ref}.skip.conv_{i + 1}", path + ("skip", f"conv_{i}"), bias=True)
    elif stride == -1:  # Sequential(UpSample(), Conv2D(1x1, bias=False))
      self.conv(f"{ref}.skip.1", path + ("skip",), bias=False)
    for i, op in enumerate(ops):
      r, p = f"{ref}._ops.{i}", path + (f"op_{i}",)
      if op == "res_bnswish":
        self.bn(f"{r}.bn_act", p + ("bn",))
        self.conv(f"{r}.conv_0", p + ("conv",), bias=True)
      else:  # InvertedResidual: [UpsamplingNearest2d], BN, ConvBNSwish x2, Conv2D, BN
        u = 1 if (i == 0 and stride == -1) else 0
        self.bn(f"{r}.conv.{u}.bn", p + ("bn_in",))
        self.conv(f"{r}.conv.{u + 1}.conv.0", p + ("expand",), bias=False, weight_norm=False)
        self.bn(f"{r}.conv.{u + 1}.conv.1", p + ("bn_expand",))
        self.conv(f"{r}.conv.{u + 2}.conv.0", p + ("depthwise",), bias=False, weight_norm=False)
        self.bn(f"{r}.conv.{u + 2}.conv.1", p + ("bn_depthwise",))
        self.conv(f"{r}.conv.{u + 3}", p + ("project",), bias=False, weight_norm=False)
        self.bn(f"{r}.conv.{u + 4}.bn", p + ("bn_out",))
    if use_se:
      self.dense(f"{ref}.se.se.0", path + ("se", "fc1"))
      self.dense(f"{ref}.se.se.2", path + ("se", "fc2"))


def nvae_plan(cfg: nvae_lib.NVAEConfig) -> _Plan:
  """The table for ``cfg`` in the reference's ``NVAE.__init__`` order (state-dict order)."""
  plan = _Plan()
  cells = nvae_layers.ARCH_CELLS[cfg.arch_instance]
  cell = lambda ref, path, ct: plan.cell(ref, path, ct, cells[ct], cfg.use_se)
  plan.leaves["prior_ftr0"] = _Leaf("params", ("prior_ftr0",), "prior")
  plan.conv("stem", ("stem",), bias=True)
  i = 0
  for b in range(cfg.num_preprocess_blocks):
    for c in range(cfg.num_preprocess_cells):
      kind = "down_pre" if c == cfg.num_preprocess_cells - 1 else "normal_pre"
      cell(f"pre_process.{i}", (f"pre_{b}_{c}",), kind)
      i += 1
  gps = cfg.groups_per_scale
  j = 0
  for s in range(cfg.num_latent_scales):
    for g in range(gps[s]):
      for c in range(cfg.num_cell_per_cond_enc):
        cell(f"enc_tower.{j}", (f"enc_{s}_{g}_{c}",), "normal_enc")
        j += 1
      if not (s == cfg.num_latent_scales - 1 and g == gps[s] - 1):
        plan.conv(f"enc_tower.{j}.conv", (f"enc_combiner_{s}_{g}", "conv"), bias=True)
        j += 1
    if s < cfg.num_latent_scales - 1:
      cell(f"enc_tower.{j}", (f"enc_down_{s}",), "down_enc")
      j += 1
  # progressive_input_cells (a ModuleList registered right after enc_tower): one
  # InputSkipCombinerCell per down_enc cell, its BNSwishConv under ``.conv``.
  if cfg.progressive_input_vae == "input_skip":
    for s in range(cfg.num_latent_scales - 1):
      r, p = f"progressive_input_cells.{s}.conv", (f"enc_input_skip_{s}", "conv")
      plan.bn(f"{r}.bn_act", p + ("bn",))
      plan.conv(f"{r}.conv_0", p + ("conv",), bias=True)
  # init_normal_sampler: enc_sampler, nf_cells, eps_conv are three ModuleLists, registered
  # in that order (state-dict order is per list, not per group).
  num_groups = cfg.num_groups
  for idx in range(num_groups):
    plan.conv(f"enc_sampler.{idx}.1", (f"enc_sampler_{idx}",), bias=True)
  for idx in range(num_groups):
    for n in range(cfg.num_nf):
      for k in (1, 2):
        r, p = f"nf_cells.{idx * cfg.num_nf + n}.cell{k}", (f"nf_{idx}_{n}", f"cell{k}")
        plan.conv(f"{r}.conv.convz.0", p + ("conv_z",), bias=False)
        plan.conv(f"{r}.conv.convz.2", p + ("conv_dw",), bias=False)
        plan.conv(f"{r}.mu.conv_0", p + ("mu",), bias=True)
  for idx in range(num_groups):
    plan.conv(f"eps_conv.{idx}", (f"eps_conv_{idx}",), bias=True)
  j, idx = 0, 0
  for s in range(cfg.num_latent_scales):
    for _ in range(gps[cfg.num_latent_scales - s - 1]):
      plan.conv(f"dec_tower.{j}.conv", (f"dec_combiner_{idx}", "conv"), bias=True)
      j += 1
      for c in range(cfg.num_cell_per_cond_dec):
        cell(f"dec_tower.{j}", (f"dec_{idx}_{c}",), "normal_dec")
        j += 1
      idx += 1
    if s < cfg.num_latent_scales - 1:
      cell(f"dec_tower.{j}", (f"dec_up_{s}",), "up_dec")
      j += 1
  i = 0
  for b in range(cfg.num_postprocess_blocks):
    for c in range(cfg.num_postprocess_cells):
      cell(f"post_process.{i}", (f"post_{b}_{c}",), "up_post" if c == 0 else "normal_post")
      i += 1
  plan.conv("image_conditional.1", ("image_conditional",), bias=True)
  return plan


# ----------------------------------------------------------------------------- args

def _ref_input_size(dataset: str) -> int:
  """util/utils.py ``get_input_size``."""
  if dataset in ("mnist", "omniglot", "cifar10"):
    return 32
  if dataset.startswith(("celeba", "imagenet", "lsun")):
    return int(dataset.split("_")[-1])
  if dataset == "ffhq":
    return 256
  raise ImportMismatchError(f"the file's args.dataset={dataset!r} is not a dataset of the "
                            "LSGM reference")


def args_dict(args: Any) -> dict[str, Any] | None:
  """The stored argparse Namespace as a dict (None when the file has no readable args)."""
  if isinstance(args, dict):
    return args
  state = getattr(args, "pickled_state", None)
  return state if isinstance(state, dict) and state else None


def check_vae_args(args: dict[str, Any], cfg: nvae_lib.NVAEConfig, what: str) -> None:
  """One line naming every NVAE architecture field where the file's args and the config
  differ (``util/utils.py override_architecture_fields`` plus the image geometry)."""
  ours = {f: getattr(cfg, f) for f in ARCH_FIELDS}
  ours["channel_mult"] = tuple(cfg.channel_mult)
  ours["progressive_input_vae"] = cfg.progressive_input_vae
  diffs = []
  for field, want in ours.items():
    if field not in args:
      diffs.append(f"{field} (missing in the file, config {want!r})")
      continue
    got = tuple(args[field]) if field == "channel_mult" else args[field]
    if isinstance(want, float):
      same = isinstance(got, (int, float)) and float(got) == want
    else:
      same = got == want
    if not same:
      diffs.append(f"{field} (file {got!r}, config {want!r})")
  dataset = str(args.get("dataset", ""))
  if dataset:
    geometry = {"image_size": _ref_input_size(dataset),
                "data_channels": 1 if dataset in ("mnist", "omniglot") else 3,
                "crop_output": dataset in ("mnist", "omniglot")}
    for field, got in geometry.items():
      if getattr(cfg, field) != got:
        diffs.append(f"{field} (file dataset {dataset!r} gives {got!r}, config "
                     f"{getattr(cfg, field)!r})")
  # Fields the reference's NVAE does not have (nvae.py: constant groups, N(0, I) prior,
  # 10 mixture components).
  for field, ref in (("ada_groups", False), ("res_dist", False)):
    if getattr(cfg, field) != ref:
      diffs.append(f"{field} (the reference's NVAE has {ref!r}, config {getattr(cfg, field)!r})")
  if cfg.decoder_dist == "dml" and cfg.num_mixture_dec != 10:
    diffs.append(f"num_mixture_dec (the reference has 10, config {cfg.num_mixture_dec})")
  if diffs:
    raise ImportMismatchError(f"{what}: the file's args do not match config.lsgm.vae: "
                              + "; ".join(diffs))


# ----------------------------------------------------------------------------- tensors

def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _convert_leaf(kind: str, value: np.ndarray) -> np.ndarray:
  # Views where possible (no copy for float32 input): a paper-size file is not doubled.
  value = np.asarray(value)
  if value.ndim != {"conv": 4, "log_gain": 4, "dense": 2, "prior": 3}.get(kind, value.ndim):
    return value  # a wrong rank: check_tree names it as mis-shaped
  if kind == "conv":  # OIHW -> HWIO
    value = np.transpose(value, (2, 3, 1, 0))
  elif kind == "log_gain":  # [O, 1, 1, 1] -> [O]
    value = value.reshape(value.shape[0])
  elif kind == "dense":  # Linear [out, in] -> Dense [in, out]
    value = np.transpose(value)
  elif kind == "prior":  # [C, H, W] -> [H, W, C]
    value = np.transpose(value, (1, 2, 0))
  return value.astype(np.float32, copy=False)


def strip_module(state_dict: dict[str, Any]) -> dict[str, Any]:
  """Drop a DistributedDataParallel ``module.`` prefix (present on every key or none)."""
  if state_dict and all(k.startswith("module.") for k in state_dict):
    return {k[len("module."):]: v for k, v in state_dict.items()}
  return state_dict


def map_nvae(state_dict: dict[str, Any], cfg: nvae_lib.NVAEConfig, what: str
             ) -> tuple[dict, dict, _Plan]:
  """(params, batch_stats, plan) of the NVAE from the reference's ``vae_state_dict``."""
  plan = nvae_plan(cfg)
  params: dict = {}
  stats: dict = {}
  consumed = set()
  for key, leaf in plan.leaves.items():
    if key not in state_dict:
      continue  # reported as a missing leaf by check_tree
    consumed.add(key)
    if leaf.collection == "alias":
      continue
    _set(params if leaf.collection == "params" else stats, leaf.path,
         _convert_leaf(leaf.kind, state_dict[key]))
  unconsumed(state_dict, consumed, what)
  return params, stats, plan


def _kernel_matrix(kernel: np.ndarray) -> np.ndarray:
  """HWIO kernel -> [O, kh * kw * I] (nvae_layers.WNConv._spectral's layout)."""
  return np.transpose(kernel, (3, 0, 1, 2)).reshape(kernel.shape[-1], -1)


def _normalized_kernel(params: dict, path: tuple[str, ...]) -> np.ndarray:
  """The conv's effective kernel: AR mask, then weight normalisation (HWIO, float32)."""
  node = _get(params, path)
  v = np.asarray(node["kernel"], np.float32)
  mask = _ar_mask(path, v)
  if mask is not None:
    v = v * mask
  if "log_gain" in node:
    norm = np.sqrt(np.sum(v * v, axis=(0, 1, 2)))
    v = np.exp(np.asarray(node["log_gain"], np.float32)) * v / (norm + 1e-5)
  return v


def _ar_mask(path: tuple[str, ...], kernel: np.ndarray) -> np.ndarray | None:
  """The autoregressive mask of an IAF conv (nvae_layers.CellAR), None elsewhere."""
  if not path[0].startswith("nf_"):
    return None
  mirror = path[1] == "cell2"
  kh, _, i_per_group, c_out = kernel.shape
  c_in, groups = (c_out, c_out) if path[-1] == "conv_dw" else (i_per_group, 1)
  zero_diag = path[-1] == "conv_z"
  return nvae_layers.ar_conv_mask(kh, c_in, groups, c_out, zero_diag, mirror)


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-3)


def spectral_vectors(sn_state: Any, plan: _Plan, params: dict, what: str,
                     num_iter: int = 40) -> dict:
  """The ``spectral`` collection (u, v per conv) from the file's ``sn_calculator``.

  Without one (or an empty one), ``num_iter`` power iterations (the reference's first
  call: 10 x 4) from a fixed start on the imported weights.
  """
  sr_u = sn_state.get("sr_u") if isinstance(sn_state, dict) else None
  sr_v = sn_state.get("sr_v") if isinstance(sn_state, dict) else None
  out: dict = {}
  if sr_u and sr_v:
    sr_u = {tuple(int(d) for d in k): u for k, u in sr_u.items()}
    sr_v = {tuple(int(d) for d in k): v for k, v in sr_v.items()}
    counters: dict[tuple[int, int], int] = {}
    for conv in plan.convs:
      kh, kw, i, o = np.shape(_get(params, conv.path)["kernel"])
      shape = (o, kh * kw * i)
      n = counters.get(shape, 0)
      counters[shape] = n + 1
      if shape not in sr_u or shape not in sr_v or n >= np.shape(sr_u[shape])[0]:
        raise ImportMismatchError(f"{what}: the spectral-regularisation state has no vector "
                                  f"{n} for weights of shape {shape}")
      u = np.asarray(sr_u[shape][n]).astype(np.float32, copy=False)
      v = np.asarray(sr_v[shape][n]).reshape(i, kh, kw)
      v = np.transpose(v, (1, 2, 0)).reshape(-1).astype(np.float32, copy=False)
      _set(out, conv.path, {"u": u, "v": v})
    extra = {s: np.shape(sr_u[s])[0] - counters.get(s, 0) for s in sr_u}
    extra = {s: n for s, n in extra.items() if n}
    if extra:
      raise ImportMismatchError(f"{what}: the spectral-regularisation state has vectors for "
                                f"convs the model lacks (shape: count) {extra}")
    return out
  rng = np.random.default_rng(0)
  for conv in plan.convs:
    mat = _kernel_matrix(_normalized_kernel(params, conv.path))
    u = _normalize(rng.standard_normal(mat.shape[0]).astype(np.float32))
    v = np.zeros(mat.shape[1], np.float32)
    for _ in range(num_iter):
      v = _normalize(u @ mat)
      u = _normalize(mat @ v)
    _set(out, conv.path, {"u": u.astype(np.float32), "v": v.astype(np.float32)})
  return out


# ----------------------------------------------------------------------------- entry

def _read(path: str) -> dict:
  try:
    obj = autoencoder_convert.read_torch_file(path)
  except FileNotFoundError:
    raise
  except (autoencoder_convert.CheckpointFormatError, EOFError, OSError, ValueError) as e:
    raise ImportMismatchError(f"{path}: not a readable LSGM checkpoint ({e})") from None
  except Exception as e:  # noqa: BLE001  (a corrupt pickle raises anything)
    raise ImportMismatchError(f"{path}: not a readable LSGM checkpoint "
                              f"({type(e).__name__}: {e})") from None
  if not isinstance(obj, dict) or "vae_state_dict" not in obj:
    keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise ImportMismatchError(f"{path}: not an LSGM checkpoint (no 'vae_state_dict'; "
                              f"found {keys})")
  return obj


def _tensors(tree: Any) -> dict[str, np.ndarray]:
  return {k: v for k, v in tree.items() if isinstance(v, np.ndarray)} if isinstance(
      tree, dict) else {}


def _step(obj: dict) -> int:
  for key in ("global_step", "step"):
    if isinstance(obj.get(key), (int, np.integer)):
      return int(obj[key])
  return 0


@in_target_layout
def convert(path: str, config: ml_collections.ConfigDict, target: Any) -> ImportedCheckpoint:
  """Read an NVlabs/LSGM checkpoint into this project's LSGM train state.

  Args:
    path: the reference's ``checkpoint*.pt`` (stage 1 or joint).
    config: an LSGM config whose ``lsgm.stage`` matches the file (``train_vae`` for a
      ``train_vae.py`` file, ``train_vada`` for a ``train_vada.py`` file).
    target: ``jax.eval_shape(method.init_state, rng)`` for ``config``.

  Returns:
    The ``ImportedCheckpoint`` (NumPy leaves; ``ema_params`` only for a joint file whose
    optimizer holds the score model's EMA, with the VAE's raw weights beside it;
    ``opt_state`` the file's moments where they convert (``lsgm_optimizer``), else None).

  Raises:
    ImportMismatchError: another format, a stage / args / key / shape mismatch (one line).
  """
  from lsgm_jax import data as data_lib  # deferred: keeps the format cheap to import
  from lsgm_jax.methods import lsgm as lsgm_method

  if config.method != "lsgm":
    raise ImportMismatchError(f"import format 'lsgm' needs an LSGM config, got "
                              f"config.method={config.method!r}")
  obj = _read(path)
  joint = "dae_state_dict" in obj
  stage = config.lsgm.stage
  want = "train_vada" if joint else "train_vae"
  if stage != want:
    kind = "a joint-stage (train_vada.py)" if joint else "a stage-1 (train_vae.py)"
    raise ImportMismatchError(
        f"{path} is {kind} checkpoint; import it with a config.lsgm.stage={want!r} config "
        f"(this one has {stage!r})")
  method = lsgm_method.LSGM(config, data_lib.dataset_info(config.data))
  cfg = method.vae_cfg
  args = args_dict(obj.get("args"))
  if args is not None:  # every args mismatch before any tensor is compared
    check_vae_args(args, cfg, path)
    if joint:
      from lsgm_jax.checkpoint_import import lsgm_score
      lsgm_score.check_score_args(args, method.score_model, path)
  vae_sd = strip_module(_tensors(obj["vae_state_dict"]))
  vae_params, vae_stats, plan = map_nvae(vae_sd, cfg, f"{path} vae_state_dict")
  check_tree(target.params["vae"], vae_params, f"{path} vae_state_dict")
  check_tree(target.model_state["vae"]["batch_stats"], vae_stats,
             f"{path} vae_state_dict (BatchNorm statistics)")
  sn_key = "vae_sn_calculator" if joint else "sn_calculator"
  model_state = {"vae": {"batch_stats": vae_stats}}
  if "spectral" in target.model_state["vae"]:
    model_state["vae"]["spectral"] = spectral_vectors(obj.get(sn_key), plan, vae_params,
                                                      f"{path} {sn_key}")
  params = {"vae": vae_params}
  vae_names = [k for k in vae_sd if k in plan.leaves and plan.leaves[k].collection == "params"]
  trains_vae = not joint or bool(config.lsgm.train_vae)
  parts = {"vae": lsgm_optimizer.Partition(
      obj.get("vae_optimizer"), vae_sd, vae_names, lambda m, w: map_nvae(m, cfg, w)[0],
      config.optim.optimizer if trains_vae else None, "config.optim.optimizer")}
  ema = None
  description = (f"LSGM {'joint' if joint else 'stage-1'} checkpoint, epoch "
                 f"{obj.get('epoch')}, step {_step(obj)}")
  if joint:
    from lsgm_jax.checkpoint_import import lsgm_score
    score = lsgm_score.convert_score(obj, method, target, path)
    params["score"] = score.params
    model_state.update(score.model_state)
    if "score_mask" in target.model_state:
      # The reference's active-channel mask (mask_inactive_variables) is not stored in its
      # files: train_vada.py recomputes it from data when --drop_inactive_var. Imported
      # here as all channels active (the mask of runs without that flag).
      model_state["score_mask"] = np.ones(target.model_state["score_mask"].shape, np.float32)
      if bool(config.lsgm.drop_inactive_var):
        logging.warning("the LSGM file stores no active-channel mask: imported with every "
                        "latent channel active (the reference recomputes it from data)")
    if score.ema is not None:
      ema = {"vae": params["vae"], "score": score.ema}
    description += "; " + score.description
    parts["score"] = score.optimizer
  check_tree(target.params, params, f"{path}")
  check_tree(target.model_state, model_state, f"{path} (model state)")
  if ema is not None:
    check_tree(target.ema_params, ema, f"{path} (EMA)")
  opt_state, note = lsgm_optimizer.convert_optimizers(parts, target.opt_state, _step(obj),
                                                      path)
  return ImportedCheckpoint(params=params, ema_params=ema, model_state=model_state,
                            step=_step(obj), opt_state=opt_state,
                            description=f"{description}; {note}")
