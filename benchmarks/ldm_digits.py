"""Latent vs pixel diffusion on digits at equal training time: sample quality by an
independent classifier.

  python benchmarks/ldm_digits.py --run=ldm:configs/ldm_digits.py:runs/ldm_digits \
      --run=pixel:configs/sgm_digits.py:runs/sgm_digits \
      --override=ldm:data.name=latents --override=ldm:data.latents_dir=runs/ae_digits/latents

Each ``--run=name:config[:variant]:workdir`` restores the newest checkpoint of a trained
run and draws ``--num`` samples with its config's sampler (the LDM's decoded through its
first stage, so both are 8x8 images in [-1, 1]). Scores as benchmarks/distill_digits.py:
the independent classifier's mean confidence and predicted-class entropy (log 10 =
2.303 for balanced classes), next to the real held-out digits. The training time of a
run is the wall time between its first and last logged step (from its TensorBoard
events), given with its step count; for "equal training time" run the two trainings
side by side on the same machine and stop both (SIGTERM: a checkpoint, exit 0) after the
same number of minutes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def training_wall_time(workdir: str) -> float | None:
  """Seconds between the first and the last ``train/loss`` event of a workdir."""
  try:
    from tensorboard.backend.event_processing import event_accumulator
  except ImportError:
    return None
  times = []
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    if "train/loss" in acc.Tags().get("tensors", []):
      times += [e.wall_time for e in acc.Tensors("train/loss")]
  return max(times) - min(times) if len(times) > 1 else None


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True,
                      help="name:config.py[:variant]:workdir (repeatable)")
  parser.add_argument("--override", action="append", default=[],
                      help="name:a.b=value, a config override of run `name` (repeatable)")
  parser.add_argument("--num", type=int, default=500)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  import jax
  from benchmarks.distill_digits import classifier_scores, real_digits
  from benchmarks.guidance_accuracy import train_classifier
  from benchmarks.train_step import load_config
  from lsgm_jax import train

  clf, held_out_acc = train_classifier()
  print(f"classifier: logistic regression, held-out accuracy {held_out_acc:.3f}")
  results = []
  for spec in args.run:
    name, rest = spec.split(":", 1)
    config_spec, workdir = rest.rsplit(":", 1)
    overrides = [o.split(":", 1)[1] for o in args.override if o.split(":", 1)[0] == name]
    config = load_config(config_spec, overrides)
    config.sampling.num_samples = args.num
    config.sampling.batch_size = min(args.num, int(config.sampling.batch_size))
    exp = train.Experiment(config, workdir, devices=jax.devices()[:1])
    state, step, _ = exp.restore_for_inference()
    images, info = train.generate_samples(exp, state, args.num, args.seed)
    row = {"run": name, "config": config_spec, "train_steps": step,
           "train_seconds": training_wall_time(workdir), "params": exp.num_params,
           "sample_shape": list(images.shape[1:]), "nfe": info["nfe"],
           "sample_seconds": info["seconds"], **classifier_scores(clf, images)}
    results.append(row)
    print(row)
  results.append({"run": "real held-out digits", **classifier_scores(clf, real_digits(297))})
  print("| run | params | train steps | train wall s | NFE | classifier confidence | "
        "class entropy |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in results:
    secs = r.get("train_seconds")
    print(f"| {r['run']} | {r.get('params', '')} | {r.get('train_steps', '')} | "
          f"{'' if secs is None else f'{secs:.0f}'} | {r.get('nfe', '')} | "
          f"{r['confidence']:.3f} | {r['class_entropy']:.3f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
