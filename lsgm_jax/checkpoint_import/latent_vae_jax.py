"""Format ``latent_vae_jax``: ericl122333/latent-vae-jax files -> a ``latent_vae`` config
(configs/latent_vae_church.py, latent_vae_bedroom.py, latent_vae_imagenet256.py).

Two layouts, both read without the reference's code:

* Training checkpoints (``train_jax.py`` -> ``jax_utils.save_checkpoint`` ->
  ``flax.training.checkpoints.save_checkpoint``, a file ``checkpoint_<step>``): flax
  msgpack of ``training_utils.EMATrainState`` -- ``{"step", "params", "opt_state",
  "ema_decay", "ema_params", "singular_vectors"}`` (``EMATrainStateAccum`` adds
  ``current_grads`` / ``accum_step``, dropped). ``opt_state`` is the state of the
  reference's ``adam`` = chain(``scale_by_adam`` with bfloat16 moments, the learning-rate
  schedule): ``{"0": {"count", "mu", "nu"}, "1": {"count"}}``.
* Released weights (the Google-Drive files ``evaluate_jax.py --checkpoint_path`` reads, and
  ``jax_utils.save_checkpoint`` with a ``.p`` / ``.pkl`` path): a pickle of a dict with
  ``"ema_params"`` and / or ``"params"`` (flax 0.5 ``FrozenDict`` of NumPy arrays), or of
  the bare params tree (what ``jax_utils.restore_checkpoint`` reads back). Read with a
  restricted unpickler that builds only dicts and NumPy arrays.

Names (reference ``model.py`` / ``nn.py`` -> ``models/hvae.py``): ``encoder/Conv_0`` ->
``enc_in``; ``encoder/EncoderLevel_i/layer_list_j`` -> ``encoder_i/blocks_b`` /
``attention_k`` / ``down`` (the j-th entry in the reference's construction order);
``layer_list_d`` (decoder levels, lowest resolution first, as here) -> ``decoder_d`` with
``layers_l`` / ``attention_k`` / ``up``; ``prior_block`` / ``posterior_block`` /
``actsproj`` / ``zproj`` / ``shared_block`` -> ``prior`` / ``posterior`` / ``merge`` /
``z_proj`` / ``shared``; in a residual block ``Dense_0`` (label) -> ``label_proj`` and
``Conv_0..3`` -> ``conv1``, ``conv2``, ``ffn_in``, ``out`` (``conv1``, ``out`` without the
FFN); ``ConvSR_0/Conv_0`` -> the ``SpectralConv`` ``out`` and its ``sn_u`` [1, C] ->
``spectral`` ``u`` [C] (the same power iteration: v = w u, u = w^T v, normalised);
attention ``Dense_0`` / ``Dense_1`` -> ``qk`` (one head) or ``qkv``, and ``out``;
``Upsample`` / ``Downsample`` ``Conv_0`` -> ``proj``; ``outproj`` -> ``out_proj``. Leaves
keep their flax layout. A file without singular vectors gets each penalised kernel's
exact top right singular vector (the power iteration's fixed point).

Neither layout stores the architecture, so the config is checked leaf by leaf
(``check_tree``); the stored ``ema_decay`` is compared with ``training.ema_decay``
(a warning: it only matters for further training).
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Iterator, Mapping

import ml_collections
import numpy as np
from absl import logging

from lsgm_jax.checkpoint_import import (ImportedCheckpoint, ImportMismatchError, check_tree,
                                        unconsumed)
from lsgm_jax.checkpoint_import import ncsnpp_torch as nt
from lsgm_jax.models import hvae
from lsgm_jax.models.autoencoder_convert import CheckpointFormatError

Path = tuple[str, ...]

_STATE_KEYS = ("step", "params", "opt_state", "ema_decay", "ema_params", "singular_vectors")


# ---------------------------------------------------------------------------
# Reading


def _frozen_dict(*args, **kwargs) -> dict:
  """flax ``FrozenDict`` (its ``__reduce__`` passes the plain dict) -> dict."""
  return dict(*args, **kwargs)


def _jax_array(fun, args, arr_state, aval_state) -> np.ndarray:
  """A pickled jax array (``DeviceArray`` / ``Array``: a NumPy reconstruction plus the
  abstract value's flags) as the NumPy array it carries; ``fun`` is the allowed NumPy
  ``_reconstruct``."""
  del aval_state
  value = fun(*args)
  value.__setstate__(arr_state)
  return value


class _ParamsUnpickler(pickle.Unpickler):
  """Builds dicts and NumPy arrays only (jax arrays pickled without ``device_get``
  become NumPy arrays); any other class is refused (one line)."""

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
      ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
  }

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    if module.startswith("flax.core.frozen_dict") and name == "FrozenDict":
      return _frozen_dict
    if name == "_reconstruct_array" and module in (
        "jax._src.array", "jax._src.device_array", "jax.interpreters.xla"):
      return _jax_array
    raise CheckpointFormatError(
        f"not a latent-vae-jax params pickle: it holds a {module}.{name} object")


def _is_pickle(head: bytes) -> bool:
  # Protocols 2-5 open with PROTO n; a msgpack map opens with 0x80-0x8f / 0xde / 0xdf,
  # where 0x80 would be the empty map.
  return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_file(path: str) -> tuple[Mapping[str, Any], str]:
  """(state dict, "msgpack" | "pickle") of a latent-vae-jax checkpoint or params pickle."""
  with open(path, "rb") as f:
    raw = f.read()
  if _is_pickle(raw[:2]):
    try:
      obj = _ParamsUnpickler(io.BytesIO(raw)).load()
    except CheckpointFormatError as e:
      raise CheckpointFormatError(f"{path}: {e}") from None
    kind = "pickle"
  else:
    from flax import serialization
    try:
      obj = serialization.msgpack_restore(raw)
    except Exception as e:  # noqa: BLE001  (msgpack raises several unrelated types)
      raise CheckpointFormatError(
          f"{path}: neither a flax msgpack checkpoint nor a params pickle "
          f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    kind = "msgpack"
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  if "params" not in obj and "ema_params" not in obj:
    if "encoder" in obj and "outproj" in obj:  # a bare params tree
      obj = {"params": obj}
    else:
      raise CheckpointFormatError(
          f"{path}: not a latent-vae-jax checkpoint (expected the EMATrainState entries "
          f"{', '.join(_STATE_KEYS)} or a params tree; found {sorted(obj)[:6]})")
  return obj, kind


# ---------------------------------------------------------------------------
# Names


def _block_children(ffn: bool, spectral: bool, label: bool) -> dict[str, str]:
  """Reference residual-block child -> ours (``nn.py`` ``ResBlockFFN`` / ``NoFFN``)."""
  convs = ["conv1", "conv2", "ffn_in", "out"] if ffn else ["conv1", "out"]
  out = {f"Conv_{i}": name for i, name in enumerate(convs)}
  if spectral:
    del out[f"Conv_{len(convs) - 1}"]
    out["ConvSR_0/Conv_0"] = "out"
    out["ConvSR_0"] = "out"  # the singular vector
  if label:
    out["Dense_0"] = "label_proj"
  return out


def _ref_attention_after(num_layers: int, num_attention: int, zero_based: bool
                         ) -> list[int]:
  """The reference's ``get_evenly_spaced_indices`` as a membership list."""
  if num_attention == 0:
    return []
  step = num_layers / (num_attention + 1)
  idx = {round(step * i) for i in range(1, num_attention + 1)}
  first = 0 if zero_based else 1
  return sorted(i for i in idx if first <= i < first + num_layers)


def module_names(cfg: hvae.HVAEConfig) -> Iterator[tuple[str, Path, dict[str, str]]]:
  """(reference module path, our module path, child table) in construction order.

  The child table maps the reference's leaf-owning children (``Conv_0``, ...) to ours;
  ``""`` names the module itself (a plain conv / dense / embedding).
  """
  res = cfg.resolutions
  n = len(res)
  enc_c = [cfg.enc_channels * m for m in cfg.channel_mult]
  dec_c = [cfg.channels * m for m in cfg.channel_mult]
  label = cfg.num_classes > 0
  heads_name = lambda h: "qk" if h == 1 else "qkv"  # noqa: E731
  if label:
    yield "embed", ("embed",), {"": ""}
  yield "encoder/Conv_0", ("enc_in",), {"": ""}
  for i in range(n):
    ffn = bool(cfg.ffn_ratio[i])
    after = _ref_attention_after(cfg.enc_layers[i], cfg.num_attention[i], zero_based=True)
    j = attn = 0
    for b in range(cfg.enc_layers[i]):
      yield (f"encoder/EncoderLevel_{i}/layer_list_{j}", (f"encoder_{i}", f"blocks_{b}"),
             _block_children(ffn, False, label))
      j += 1
      if b in after:
        yield (f"encoder/EncoderLevel_{i}/layer_list_{j}", (f"encoder_{i}", f"attention_{attn}"),
               {"Dense_0": heads_name(cfg.attention_heads[i]), "Dense_1": "out"})
        j, attn = j + 1, attn + 1
    if i + 1 < n and enc_c[i + 1] != enc_c[i]:
      yield (f"encoder/EncoderLevel_{i}/layer_list_{j}", (f"encoder_{i}", "down"),
             {"Conv_0": "proj"})
  yield "initial_x", ("initial_x",), {"": ""}
  for d, i in enumerate(reversed(range(n))):
    ffn = bool(cfg.ffn_ratio[i])
    after = _ref_attention_after(cfg.num_groups[i], cfg.num_attention[i], zero_based=False)
    j = attn = 0
    for l in range(1, cfg.num_groups[i] + 1):
      base = f"layer_list_{d}/layer_list_{j}"
      ours = (f"decoder_{d}", f"layers_{l - 1}")
      yield f"{base}/actsproj", ours + ("merge",), {"": ""}
      yield f"{base}/zproj", ours + ("z_proj",), {"": ""}
      yield f"{base}/posterior_block", ours + ("posterior",), _block_children(ffn, True, label)
      yield f"{base}/prior_block", ours + ("prior",), _block_children(ffn, True, label)
      yield f"{base}/shared_block", ours + ("shared",), _block_children(ffn, False, label)
      j += 1
      if l in after:
        yield (f"layer_list_{d}/layer_list_{j}", (f"decoder_{d}", f"attention_{attn}"),
               {"Dense_0": heads_name(cfg.attention_heads[i]), "Dense_1": "out"})
        j, attn = j + 1, attn + 1
    if i > 0 and dec_c[i - 1] != dec_c[i]:
      yield f"layer_list_{d}/layer_list_{j}", (f"decoder_{d}", "up"), {"Conv_0": "proj"}
  yield "outproj", ("out_proj",), {"": ""}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(_flatten(value, name))
    else:
      out[name] = np.asarray(value)
  return out


def _set(tree: dict, path: Path, value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _leaf_map(cfg: hvae.HVAEConfig) -> tuple[dict[str, Path], dict[str, Path]]:
  """(reference param leaf -> our param path, reference ``sn_u`` -> our spectral path)."""
  params, vectors = {}, {}
  for ref, ours, children in module_names(cfg):
    if ref == "initial_x":
      params[ref] = ours
      continue
    leaves = ("embedding",) if ref == "embed" else ("kernel", "bias")
    for child, our_child in children.items():
      ref_mod = f"{ref}/{child}" if child else ref
      our_mod = ours + ((our_child,) if our_child else ())
      if child == "ConvSR_0":
        vectors[f"{ref_mod}/sn_u"] = our_mod + ("u",)
        continue
      for leaf in leaves:
        params[f"{ref_mod}/{leaf}"] = our_mod + (leaf,)
  return params, vectors


def convert_params(tree: Any, cfg: hvae.HVAEConfig, target_params: Any, what: str) -> dict:
  """Our params tree of a reference params tree (leaves as stored)."""
  if not isinstance(tree, Mapping):
    raise ImportMismatchError(f"{what}: not a params tree")
  flat = _flatten(tree)
  names, _ = _leaf_map(cfg)
  out: dict = {}
  consumed = set()
  for key, value in flat.items():
    path = names.get(key)
    if path is not None:
      _set(out, path, value)
      consumed.add(key)
  unconsumed(flat, consumed, what)
  check_tree(target_params, out, what)
  return out


def convert_vectors(tree: Any, cfg: hvae.HVAEConfig, target_state: Any, what: str) -> dict:
  """``{"spectral": ...}`` of the reference's ``singular_vectors`` ([1, C] -> [C])."""
  flat = _flatten(tree) if isinstance(tree, Mapping) else {}
  _, names = _leaf_map(cfg)
  spectral: dict = {}
  consumed = set()
  for key, value in flat.items():
    path = names.get(key)
    if path is not None:
      _set(spectral, path, np.asarray(value, np.float32).reshape(-1))
      consumed.add(key)
  unconsumed(flat, consumed, what)
  state = {hvae.SPECTRAL_COLLECTION: spectral}
  check_tree(target_state, state, what)
  return state


def top_singular_vectors(params: Mapping[str, Any], target_state: Any) -> dict:
  """Spectral state for a file without vectors: each penalised kernel's top right
  singular vector (kernel as ``[k*k*C_in, C_out]``, sign fixed by a positive sum)."""
  def walk(node, target):
    if isinstance(target, Mapping) and "u" in target and not isinstance(target["u"], Mapping):
      w = np.asarray(node["kernel"], np.float64).reshape(-1, target["u"].shape[0])
      u = np.linalg.svd(w, full_matrices=False)[2][0]
      return {"u": (u * (1.0 if u.sum() >= 0 else -1.0)).astype(np.float32)}
    return {k: walk(node[k], v) for k, v in target.items()}
  collection = target_state[hvae.SPECTRAL_COLLECTION]
  return {hvae.SPECTRAL_COLLECTION: walk(params, collection)}


def _optimizer_state(state: Mapping[str, Any], cfg: hvae.HVAEConfig, config, target: Any,
                     step: int) -> tuple[Any | None, str]:
  """The optax Adam state of the file's ``opt_state`` when the layouts map."""
  opt = state.get("opt_state")
  first = opt.get("0") if isinstance(opt, Mapping) else None
  if not (isinstance(first, Mapping) and {"count", "mu", "nu"} <= set(first)):
    return None, "fresh optimizer state (the file has none)"
  if config.optim.optimizer not in ("adam", "adamw"):
    return None, f"fresh {config.optim.optimizer} state (the file holds Adam moments)"
  mu, nu = (convert_params(_as_float32(first[k]), cfg, target.params,
                           f"latent_vae_jax 'opt_state' {k}") for k in ("mu", "nu"))
  count = int(np.asarray(first["count"]).reshape(-1)[0])
  opt_state = nt.optax_adam_state(target.opt_state, mu, nu, count, step)
  if opt_state is None:
    return None, "fresh optimizer state (the config's optimizer state is not plain Adam)"
  check_tree(target.opt_state, opt_state, "latent_vae_jax 'opt_state'")
  return opt_state, f"Adam moments (count {count})"


def _as_float32(tree: Any) -> Any:
  """The reference's bfloat16 Adam moments as float32 (optax keeps this project's in
  float32)."""
  if isinstance(tree, Mapping):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def hvae_config_of(config: ml_collections.ConfigDict) -> hvae.HVAEConfig:
  """The ``HVAEConfig`` the ``latent_vae`` method builds from ``config``."""
  from lsgm_jax import data
  from lsgm_jax.methods import latent_vae
  if config.method != "latent_vae":
    raise ImportMismatchError(
        "latent_vae_jax files hold the latent VAE's deep VAE: use a config with "
        f"method='latent_vae' (got method={config.method!r})")
  cfg = latent_vae.build_hvae_config(config.latent_vae, data.dataset_info(config.data))
  if cfg.lowres_conditioning:
    raise ImportMismatchError(
        "latent_vae_jax imports support the base VAE (model.py VAE); the reference's "
        "SuperResolutionVAE has no released file (config.latent_vae.lowres_conditioning)")
  return cfg


def convert(path: str, config: ml_collections.ConfigDict, target: Any) -> ImportedCheckpoint:
  """Reads a latent-vae-jax ``checkpoint_<step>`` or params pickle (no reference code).

  Args:
    path: the file.
    config: a ``latent_vae`` config of the file's architecture.
    target: ``jax.eval_shape`` of the method's ``init_state``.

  Returns:
    The ``ImportedCheckpoint``: ``params`` (raw, or the EMA when the file holds only
    that), ``ema_params``, the spectral vectors as ``model_state``, the file's step and
    its Adam moments when the config's optimizer is Adam.

  Raises:
    CheckpointFormatError: not a latent-vae-jax file.
    ImportMismatchError: the file's model does not fit the config (one line).
  """
  cfg = hvae_config_of(config)
  state, kind = read_file(path)
  raw = state.get("params")
  ema = state.get("ema_params")
  if raw is None:
    raw, ema = ema, None  # released files may hold only the EMA weights
  params = convert_params(raw, cfg, target.params, "latent_vae_jax 'params'")
  ema_params = None
  if ema is not None:
    ema_params = convert_params(ema, cfg, target.params, "latent_vae_jax 'ema_params'")
  if state.get("singular_vectors") is not None:
    model_state = convert_vectors(state["singular_vectors"], cfg, target.model_state,
                                  "latent_vae_jax 'singular_vectors'")
    vectors_note = "singular_vectors -> spectral"
  else:
    model_state = top_singular_vectors(ema_params if ema_params is not None else params,
                                       target.model_state)
    vectors_note = "spectral vectors from the kernels' SVD"
  step = int(np.asarray(state.get("step", 0)).reshape(-1)[0])
  stored_decay = state.get("ema_decay")
  if stored_decay is not None and abs(float(stored_decay) - config.training.ema_decay) > 1e-12:
    logging.warning("the file's EMA decay is %s, config.training.ema_decay is %s (used from "
                    "now on)", float(stored_decay), config.training.ema_decay)
  multi_head = any(k and h > 1 for k, h in zip(cfg.num_attention, cfg.attention_heads))
  if multi_head and not cfg.reference_attention:
    logging.warning(
        "the reference's multi-head attention layers output x + a projection of q (its "
        "AttentionLayer overwrites the attention result); to reproduce its outputs from "
        "these weights run with --config.latent_vae.reference_attention=True")
  opt_state, opt_note = _optimizer_state(state, cfg, config, target, step)
  if opt_state is None:
    logging.warning("latent_vae_jax import: %s", opt_note)
  description = (f"latent-vae-jax {kind} step {step}: "
                 + ("params -> params, " if state.get("params") is not None
                    else "ema_params -> params, ")
                 + ("ema_params -> ema_params, " if ema_params is not None else "")
                 + f"{vectors_note}, {opt_note}")
  return ImportedCheckpoint(params=params, ema_params=ema_params, model_state=model_state,
                            step=step, opt_state=opt_state, description=description)
