"""Image manipulations with a deep VAE (latent VAE paper, section 5).

* :func:`manifold`: a 2-D sweep over the most active channel of the first two 1x1
  latent groups, every other latent from one fixed noise draw (section 5.1, Figure 4).
* :func:`interpolate`: linear paths between two images' posterior latents, decoded by
  the generator (section 5.2, Figure 5).
* :func:`outpaint`: a canvas ``factor`` times wider; posterior latents for the known
  (left) region, prior latents for the rest, the 1x1 latents kept intact (section 5.3,
  Figure 6).

They work on ``models.hvae.HVAE`` through flax method interception: the posterior pass
is read at each layer's ``z_proj`` (the z it projects), and the prior pass has its z
replaced there, so the model code needs no manipulation-specific paths. Rematerialised
levels are turned off for these passes (same parameters). ``run_task`` is the
``--mode=sample`` entry (``config.latent_vae.task``), writing a PNG.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lsgm_jax.models import hvae
from lsgm_jax.models import hvae_layers, hvae_losses

Array = jax.Array
PyTree = Any
# override(layer, model_z, prior_mean, prior_std) -> the z to project
Override = Callable[[int, Array, Array, Array], Array]


def inference_model(model: hvae.HVAE) -> hvae.HVAE:
  """The same model without rematerialisation (values read out of a remat'd layer
  would leak tracers)."""
  return hvae.HVAE(dataclasses.replace(model.config, remat=()))


def layer_resolutions(cfg: hvae.HVAEConfig) -> list[int]:
  """Resolution of every stochastic layer, top (lowest resolution) first."""
  res = cfg.resolutions
  return [res[i] for i in reversed(range(len(res))) for _ in range(cfg.num_groups[i])]


def _is_z_proj(context) -> bool:
  return context.module.name == "z_proj" and context.method_name == "__call__"


def posterior_latents(model: hvae.HVAE, variables: PyTree, x: Array,
                      label: Array | None = None, *, temperature: float = 0.0,
                      rng: Array | None = None) -> tuple[list[Array], hvae.HVAEOutput]:
  """z_l ~ q(z_l | z_<l, x) for every layer, top first, and the posterior pass's output.

  Args:
    model: the deep VAE (remat is dropped here).
    variables: its variables (params and spectral vectors).
    x: data ``[B,H,W,C]``.
    label: classes ``[B]`` (class-conditional models); never dropped here.
    temperature: scales the posterior noise; 0 gives the posterior means.
    rng: key of the posterior noise.

  Returns:
    (per-layer z ``[B,r,r,z_channels]``, the ``HVAEOutput`` decoded from those z).
  """
  model = inference_model(model)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  zs: list[Array] = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, hvae.StochasticLayer) and context.method_name == "__call__":
      args = args[:2] + (args[2] * temperature,) + args[3:]  # (x, acts, eps, ...)
    elif _is_z_proj(context):
      zs.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, x, label, drop_labels=False, rngs={hvae.SAMPLE_RNG: rng})
  return zs, out


def prior_pass(model: hvae.HVAE, variables: PyTree, key: Array, num: int,
               override: Override, label: Array | None = None, *,
               temperature: float = 1.0, width_factor: int = 1) -> tuple[Array, list[Array]]:
  """Ancestral pass of the (unguided) prior in which ``override`` chooses every z.

  Args:
    model, variables: the deep VAE.
    key: key of the model's own prior draws (passed to ``override`` as ``model_z``).
    num: batch size.
    override: ``(layer, model_z, prior_mean, prior_std) -> z``, layer counted from
      the top (0).
    label: classes ``[num]`` (class-conditional models).
    temperature: of the model's own draws.
    width_factor: the state leaving the 1x1 level is tiled this many times along the
      width, so every later level (and the output) is that much wider (outpainting).

  Returns:
    (predicted data means ``[num,H,W*width_factor,C]``, the z of every layer).
  """
  model = inference_model(model)
  zs: list[Array] = []
  prior: list[tuple[Array, Array]] = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, hvae.StochasticLayer) and context.method_name == "_prior":
      out = next_fun(*args, **kwargs)
      prior.append(out[:2])
      return out
    if _is_z_proj(context):
      mean, std = prior[-1]
      z = override(len(zs), args[0], mean, std)
      zs.append(z)
      return next_fun(z, *args[1:], **kwargs)
    if (isinstance(context.module, hvae_layers.Resample) and context.module.up
        and width_factor > 1 and args[0].shape[2] == 1):
      return next_fun(jnp.tile(args[0], (1, 1, width_factor, 1)), **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, key, num, label, temperature=temperature,
                      method=hvae.HVAE.sample)
  return out, zs


def channel_activity(model: hvae.HVAE, variables: PyTree, x: Array,
                     label: Array | None = None) -> list[Array]:
  """Per-layer, per-channel KL(q || p) in nats averaged over the batch ``[z_channels]``
  (the "most active channel" of section 5.1 is its argmax)."""
  model = inference_model(model)
  kls: list[Array] = []
  prior: list[tuple[Array, Array]] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, hvae.StochasticLayer) and context.method_name == "_prior":
      prior.append(out[:2])
    elif (isinstance(context.module, hvae_layers.Block) and context.module.name == "posterior"
          and context.method_name == "__call__"):
      q_mean, q_raw = jnp.split(out[0], 2, axis=-1)
      prior.append(("q", q_mean, hvae_losses.smoothed_variance(q_raw)))
    elif _is_z_proj(context):
      (_, q_mean, q_var), (p_mean, p_std) = prior[-2], prior[-1]
      kl = hvae_losses.gaussian_kl(q_mean, q_var, p_mean, p_std ** 2)
      kls.append(jnp.mean(jnp.sum(kl, axis=(1, 2)), axis=0))
    return out

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, label, drop_labels=False,
                rngs={hvae.SAMPLE_RNG: jax.random.PRNGKey(0)})
  return kls


def manifold_layers(cfg: hvae.HVAEConfig) -> tuple[int, int]:
  """The first two 1x1 layers (section 5.1), else the first two layers."""
  ones = [i for i, r in enumerate(layer_resolutions(cfg)) if r == 1]
  layers = ones[:2] if len(ones) >= 2 else [0, 1]
  if cfg.total_groups < 2:
    raise ValueError("the manifold sweep needs at least two latent groups")
  return layers[0], layers[1]


def manifold(model: hvae.HVAE, variables: PyTree, key: Array, channels: Sequence[int],
             *, size: int = 9, value_range: float = 2.25, label: Array | None = None,
             temperature: float = 1.0) -> tuple[Array, list[Array]]:
  """The 2-D sweep of section 5.1 (Figure 4).

  Row i sets the noise of ``channels[0]`` in the first manifold layer to
  ``linspace(-value_range, value_range, size)[i]``, column j that of ``channels[1]`` in
  the second; every other noise value is one draw shared by the whole grid.

  Args:
    model, variables: the deep VAE.
    key: key of the shared noise.
    channels: the swept channel of each of the two layers (``channel_activity``).
    size: grid side.
    value_range: the sweep covers [-value_range, value_range].
    label: one class (scalar) for class-conditional models.
    temperature: of the shared noise.

  Returns:
    (images ``[size, size, H, W, C]``, per-layer z ``[size*size, ...]``).
  """
  cfg = model.config
  layers = manifold_layers(cfg)
  values = jnp.linspace(-value_range, value_range, size)
  sweep = {layers[0]: (channels[0], jnp.repeat(values, size)),
           layers[1]: (channels[1], jnp.tile(values, size))}
  num = size * size

  def override(layer, model_z, mean, std):
    del model_z
    eps = temperature * jax.random.normal(jax.random.fold_in(key, layer), mean.shape[1:])
    eps = jnp.broadcast_to(eps, mean.shape)
    if layer in sweep:
      channel, v = sweep[layer]
      eps = eps.at[..., channel].set(v[:, None, None])
    return mean + std * eps

  labels = None if label is None else jnp.full((num,), label, jnp.int32)
  images, zs = prior_pass(model, variables, key, num, override, labels)
  return images.reshape((size, size) + images.shape[1:]), zs


def interpolate(model: hvae.HVAE, variables: PyTree, x1: Array, x2: Array,
                label1: Array | None = None, label2: Array | None = None, *,
                steps: int = 5, posterior_temperature: float = 0.0,
                rng: Array | None = None) -> Array:
  """Paths between two images through their posteriors (section 5.2, Figure 5).

  z_interp = (1 - lambda) z(x1) + lambda z(x2) at ``steps`` evenly spaced lambda in
  [0, 1], decoded by the generator. Class-conditional models use ``label1`` for
  lambda < 1/2 and ``label2`` from there on.

  Returns:
    ``[B, steps, H, W, C]``; with temperature 0 the ends are the posterior passes'
    reconstructions (predicted means) of x1 and x2.
  """
  b = x1.shape[0]
  both = None if label1 is None else jnp.concatenate([label1, label2])
  zs, _ = posterior_latents(model, variables, jnp.concatenate([x1, x2]), both,
                            temperature=posterior_temperature, rng=rng)
  lam = jnp.asarray(np.linspace(0.0, 1.0, steps), jnp.float32)  # [steps]
  # One prior pass over all B * steps points, ordered (example, step).
  path = []
  for z in zs:
    z1, z2 = z[:b, None], z[b:, None]
    mix = (1.0 - lam[None, :, None, None, None]) * z1 + lam[None, :, None, None, None] * z2
    path.append(mix.reshape((b * steps,) + z.shape[1:]))
  label = None
  if label1 is not None:
    label = jnp.where(lam[None, :] < 0.5, label1[:, None], label2[:, None]).reshape(-1)
  images, _ = prior_pass(model, variables, jax.random.PRNGKey(0), b * steps,
                         lambda layer, *_: path[layer], label)
  return images.reshape((b, steps) + images.shape[1:])


def outpaint(model: hvae.HVAE, variables: PyTree, x: Array, key: Array,
             label: Array | None = None, *, factor: int = 2,
             temperature: float = 1.0) -> tuple[Array, list[Array], list[Array]]:
  """Outpaints ``x`` to a canvas ``factor`` times wider (section 5.3, Figure 6).

  The 1x1 latents are the posterior's (global context); at every other layer the left
  ``W`` columns hold the posterior latents (means) of ``x`` and the new columns prior
  draws at ``temperature`` (N(0, I) for the unconditional models of section 5).

  Returns:
    (canvas ``[B, H, factor*W, C]``, the z used per layer, the posterior z per layer).
  """
  z_post, _ = posterior_latents(model, variables, x, label)

  def override(layer, model_z, mean, std):
    del mean, std
    known = z_post[layer]
    if known.shape[2] == model_z.shape[2]:  # 1x1 (and any unwidened) layer: intact
      return known
    return model_z.at[:, :, :known.shape[2]].set(known)

  images, zs = prior_pass(model, variables, key, x.shape[0], override, label,
                          temperature=temperature, width_factor=factor)
  return images, zs, z_post


# ---------------------------------------------------------------------------
# --mode=sample tasks


def save_rows(images: np.ndarray, path: str, *, centered: bool = True,
              upscale: int = 0) -> None:
  """Writes ``[rows, cols, H, W, C]`` images as one PNG grid (1-pixel white gaps)."""
  images = np.asarray(images, np.float32)
  if centered:
    images = (images + 1.0) / 2.0
  images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
  rows, cols, h, w, c = images.shape
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(rows):
    for j in range(cols):
      grid[1 + i * (h + 1):1 + i * (h + 1) + h, 1 + j * (w + 1):1 + j * (w + 1) + w] = \
          images[i, j]
  img = Image.fromarray(grid[..., 0] if c == 1 else grid)
  upscale = upscale or max(1, 256 // max(h, 1) // 2)
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  img.save(path)


def run_task(method, variables: PyTree, out_dir: str) -> dict[str, float]:
  """Runs ``config.latent_vae.task`` of a ``methods.latent_vae.LatentVAE`` with the
  given variables (EMA params and spectral vectors) and writes ``<task>.png`` (and
  ``.npz``) into ``out_dir``. Held-out images come from the eval split."""
  from lsgm_jax import data  # the data layer, imported only by this entry point

  config, lv = method.config, method.config.latent_vae
  model = method.model
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3_000_017)
  need = max(int(lv.interpolate_pairs) * 2, int(lv.outpaint_num), 64)
  held_out = next(data.make_eval_iterator(config.data, global_batch_size=need))
  x = jnp.asarray(held_out["x"])
  labels = jnp.asarray(held_out["label"], jnp.int32) if method.conditional else None
  task = lv.task
  info: dict[str, float] = {}

  if task == "manifold":
    layers = manifold_layers(model.config)
    activity = jax.jit(lambda v: channel_activity(model, v, x, labels))(variables)
    channels = [int(jnp.argmax(activity[layer])) for layer in layers]
    label = jnp.int32(lv.manifold_label) if method.conditional else None
    images, _ = jax.jit(lambda v: manifold(
        model, v, key, channels, size=int(lv.manifold_size),
        value_range=float(lv.manifold_range), label=label,
        temperature=float(lv.manipulation_temperature)))(variables)
    info.update(layer_a=layers[0], channel_a=channels[0], layer_b=layers[1],
                channel_b=channels[1])
  elif task == "interpolate":
    n = int(lv.interpolate_pairs)
    l1, l2 = (None, None) if labels is None else (labels[:n], labels[n:2 * n])
    images = jax.jit(lambda v: interpolate(
        model, v, x[:n], x[n:2 * n], l1, l2, steps=int(lv.interpolate_steps)))(variables)
  elif task == "outpaint":
    n = int(lv.outpaint_num)
    label = None if labels is None else labels[:n]
    canvas, _, _ = jax.jit(lambda v: outpaint(
        model, v, x[:n], key, label, factor=int(lv.outpaint_factor),
        temperature=float(lv.manipulation_temperature)))(variables)
    original = jnp.concatenate(
        [x[:n], jnp.full(x[:n].shape[:2] + (canvas.shape[2] - x.shape[2], x.shape[3]),
                         jnp.nan)], axis=2)
    images = jnp.stack([original, canvas], axis=1)
  else:
    raise ValueError(f"config.latent_vae.task={task!r}: not a manipulation task")

  shape = images.shape
  flat = images.reshape((-1,) + shape[2:])
  finite = jnp.isfinite(flat)
  pixels = method.decode(jnp.where(finite, flat, 0.0))
  if pixels.shape == flat.shape:  # no first stage: blank the padding of "original"
    pixels = jnp.where(finite, pixels, 1.0)
  pixels = np.asarray(pixels).reshape(shape[:2] + pixels.shape[1:])
  path = os.path.join(out_dir, f"{task}.png")
  centered = bool(config.data.centered) or bool(lv.first_stage)
  save_rows(pixels, path, centered=centered)
  np.savez(os.path.join(out_dir, f"{task}.npz"), images=pixels)
  info["num_images"] = float(shape[0] * shape[1])
  return info
