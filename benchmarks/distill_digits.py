"""Progressive distillation on digits: the 2^k-step students vs their teacher's DDIM.

  python -m lsgm_jax.main --config=configs/sgm_digits.py:v --workdir=runs/sgm_digits_v
  python -m lsgm_jax.main --config=configs/distill_digits.py --workdir=runs/distill_digits
  python benchmarks/distill_digits.py --teacher=runs/sgm_digits_v \
      --distill=runs/distill_digits --students=8,4 --teacher_steps=4,8,256

Every row draws ``--num`` samples with deterministic DDIM from the SAME prior noise
(one key), so rows are comparable image by image. Columns: the NFE; the mean per-image
L2 distance (8x8 pixels in [-1, 1]) to the teacher's samples at the largest teacher
step count (how well a fast sampler reproduces the slow one); and two scores of an
independent classifier (scikit-learn logistic regression trained here on the real
training digits, benchmarks/guidance_accuracy.py): its mean confidence (max class
probability: recognisable digits score high) and the entropy of its predicted-class
histogram (log 10 = 2.303 for ten equally used classes; collapse lowers it). The real
held-out digits give the reference row. A student of N steps is the permanent
checkpoint at the end of the round that trained it (``distill.steps_per_round`` x
round).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def classifier_scores(clf, images) -> dict[str, float]:
  """Mean max-probability and predicted-class entropy of ``images`` [N, 8, 8, 1]."""
  import numpy as np
  x = np.asarray(images, np.float32).reshape(len(images), -1)
  probs = clf.predict_proba(np.clip(x, -1.0, 1.0))
  hist = np.bincount(probs.argmax(-1), minlength=probs.shape[1]) / len(x)
  entropy = -float(np.sum(hist[hist > 0] * np.log(hist[hist > 0])))
  return {"confidence": float(probs.max(-1).mean()), "class_entropy": entropy}


def real_digits(num: int):
  """``num`` held-out digits in the classifier's space (level + 1/2 of 17, in [-1, 1])."""
  import numpy as np
  from lsgm_jax.data import catalog, embedded
  _, _, eval_x, _ = embedded.digits_split()
  x = (eval_x[:num].reshape(-1, 8, 8, 1) + 0.5) / (catalog.DIGITS_MAX_LEVEL + 1)
  return (2.0 * x - 1.0).astype(np.float32)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", default="runs/sgm_digits_v")
  parser.add_argument("--teacher_config", default="configs/sgm_digits.py:v")
  parser.add_argument("--distill", default="runs/distill_digits")
  parser.add_argument("--distill_config", default="configs/distill_digits.py")
  parser.add_argument("--students", default="8,4")
  parser.add_argument("--teacher_steps", default="4,8,256")
  parser.add_argument("--num", type=int, default=500)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--override", action="append", default=[],
                      help="distill config override a.b=value (repeatable)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  import jax
  import numpy as np
  from benchmarks.guidance_accuracy import train_classifier
  from benchmarks.train_step import load_config
  from lsgm_jax import checkpoint, train

  clf, held_out_acc = train_classifier()
  print(f"classifier: logistic regression, held-out accuracy {held_out_acc:.3f}")
  devices = jax.devices()[:1]
  config = load_config(args.distill_config, args.override)
  exp = train.Experiment(config, args.distill, devices=devices)
  method = exp.method
  teacher_exp = train.Experiment(load_config(args.teacher_config, []), args.teacher,
                                 devices=devices)
  teacher_state, teacher_step, _ = teacher_exp.restore_for_inference()
  reading = config.model.prediction
  rng = jax.random.PRNGKey(args.seed)

  def draw(params, net_state, steps, how):
    out, info = jax.jit(method.student_sampler(params, net_state, steps, how),
                        static_argnums=1)(rng, args.num)
    return np.asarray(out), int(info["nfe"])

  rows = []
  teacher_counts = sorted(int(s) for s in args.teacher_steps.split(","))
  for steps in teacher_counts:
    images, nfe = draw(teacher_state.ema_params, teacher_state.model_state, steps, reading)
    rows.append({"model": f"teacher (step {teacher_step}) DDIM", "steps": steps, "nfe": nfe,
                 "images": images})
  ckpt = checkpoint.Checkpointer(args.distill, config.checkpoint, read_only=True)
  target = checkpoint.abstract_with_shardings(exp.abstract_state, exp.state_shardings)
  for steps in (int(s) for s in args.students.split(",")):
    rounds = int(round(math.log2(method.teacher_steps / steps)))
    step = rounds * method.steps_per_round
    state, _ = ckpt.restore(step, target, exp.fingerprint)[:2]
    assert int(state.model_state["round"]) == rounds - 1, "checkpoint of another round"
    images, nfe = draw(state.params, state.model_state["net"], steps, "v")
    rows.append({"model": f"student, round {rounds} (step {step})", "steps": steps,
                 "nfe": nfe, "images": images})
  ckpt.close()
  reference = rows[len(teacher_counts) - 1]["images"]  # the teacher's most-step samples
  results = []
  for row in rows:
    images = row.pop("images")
    row["l2_to_teacher_max_steps"] = float(np.mean(np.linalg.norm(
        (images - reference).reshape(len(images), -1), axis=-1)))
    row.update(classifier_scores(clf, images))
    results.append(row)
  real = {"model": "real held-out digits", "steps": 0, "nfe": 0,
          "l2_to_teacher_max_steps": float("nan"),
          **classifier_scores(clf, real_digits(min(args.num, 297)))}
  results.append(real)
  print(f"| model | DDIM steps (NFE) | L2 to teacher@{teacher_counts[-1]} | classifier "
        "confidence | class entropy |")
  print("|---|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['model']} | {r['nfe']} | {r['l2_to_teacher_max_steps']:.3f} | "
          f"{r['confidence']:.3f} | {r['class_entropy']:.3f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
