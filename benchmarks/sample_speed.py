"""Sampling speed of the ImageNet-256 latent VAE (latent VAE paper, Table 4: 213.8 s per
1,000 guided images on a Tesla T4, i.e. 4.68 images/s).

  python benchmarks/sample_speed.py --batch=4 --repeats=3

Builds ``configs/latent_vae_imagenet256.py`` (386.4M parameters, random weights: speed
does not depend on their values), and times one jitted guided sampling pass (w_mu = 1.5,
w_sigma = 3: conditional and unconditional states side by side, one z per layer; a
single forward pass, no iterative solver) over ``--batch`` images, after a compile
run. With ``--decode`` (default on) the latents also go through an LDM kl-f8 decoder
(``models.autoencoder``, random weights) to 256x256x3 images, timed separately and
end to end. Prints images/s next to the paper's figure, with the hardware named.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAPER_SECONDS_PER_1000 = 213.8  # Table 4, Tesla T4, with guidance


def random_like(shapes, seed: int = 0):
  """Arrays of the given ShapeDtypeStructs filled from numpy (no compiled init)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  r = np.random.default_rng(seed)

  def fill(path, s):
    if "spectral" in jax.tree_util.keystr(path):
      return jnp.full(s.shape, 1.0 / np.sqrt(s.shape[-1]), s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    scale = 1.0 / np.sqrt(max(fan_in, 1)) if len(s.shape) > 1 else 0.0
    return jnp.asarray(r.standard_normal(s.shape, np.float32) * scale, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def timed(fn, *args, repeats: int):
  """(compile + first run seconds, best of ``repeats`` seconds, output)."""
  import jax
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def hardware() -> str:
  import jax
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
  return f"{dev.device_kind} ({dev.platform})"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/latent_vae_imagenet256.py")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--decode", type=int, default=1, help="1: time the kl-f8 decoder")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  from benchmarks.train_step import load_config
  from lsgm_jax import data
  from lsgm_jax.methods import build_method
  from lsgm_jax.models import autoencoder
  from lsgm_jax.presets import autoencoder as ae_presets

  config = load_config(args.config, [])
  method = build_method(config, data.dataset_info(config.data))
  shapes = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
  params, model_state = random_like(shapes)
  variables = {"params": params, **model_state}
  num_params = sum(x.size for x in jax.tree.leaves(params))
  lv = config.latent_vae
  sample = jax.jit(lambda v, key: method.sample_latents(v, key, args.batch))
  key = jax.random.PRNGKey(0)
  first, best, latents = timed(sample, variables, key, repeats=args.repeats)
  result = {"hardware": hardware(), "params": num_params, "batch": args.batch,
            "latent_compile_and_first_s": first, "latent_s_per_batch": best,
            "latent_images_per_s": args.batch / best}
  print(f"hardware: {result['hardware']}")
  print(f"ImageNet-256 latent VAE: {num_params:,} parameters, guided sampling w_mu="
        f"{lv.w_mu:g}, w_sigma={lv.w_sigma:g}, batch {args.batch}, latents "
        f"{tuple(latents.shape[1:])}")
  print(f"  latents: compile + first pass {first:.1f} s; best of {args.repeats}: "
        f"{best:.2f} s per batch = {args.batch / best:.3f} images/s")

  if args.decode:
    ae_cfg = ae_presets.PRESETS["kl-f8"]
    ae = autoencoder.AutoencoderKL(ae_cfg)
    z = jnp.zeros((1,) + tuple(latents.shape[1:]), jnp.float32)
    ae_params = random_like(jax.eval_shape(
        lambda: ae.init(jax.random.PRNGKey(0), z, method=ae.decode)))["params"]
    decode = jax.jit(lambda p, z: ae.apply({"params": p}, z, method=ae.decode))
    d_first, d_best, images = timed(decode, ae_params, latents, repeats=args.repeats)
    total = best + d_best
    result.update(decode_s_per_batch=d_best, decoded_images_per_s=args.batch / total,
                  image_shape=tuple(images.shape[1:]))
    print(f"  kl-f8 decoder ({sum(x.size for x in jax.tree.leaves(ae_params)):,} params) "
          f"to {tuple(images.shape[1:])}: compile + first {d_first:.1f} s; best "
          f"{d_best:.2f} s per batch")
    print(f"  latents + decode: {total:.2f} s per batch = {args.batch / total:.3f} "
          f"images/s = {1000 * total / args.batch:.0f} s per 1,000 images")
  paper = 1000 / PAPER_SECONDS_PER_1000
  print(f"paper (Table 4): {PAPER_SECONDS_PER_1000} s per 1,000 images on a Tesla T4 = "
        f"{paper:.2f} images/s")
  return result


if __name__ == "__main__":
  main()
