"""Classifier guidance on the 8x8 digits (issue 13): the noise classifier's accuracy vs t,
and the class accuracy of guided samples vs the guidance scale w.

  python -m lsgm_jax.main --config=configs/sgm_digits.py --workdir=runs/sgm_digits
  python -m lsgm_jax.main --config=configs/noise_classifier_digits.py --workdir=runs/clf_digits
  python benchmarks/classifier_guidance.py --score_workdir=runs/sgm_digits \
      --classifier_workdir=runs/clf_digits --scales=0,0.5,1,2,4

Accuracy vs t: the EMA classifier on the held-out split, x_t drawn from the VP kernel at
fixed t (``NoiseClassifier.eval_terms``). Sample accuracy: for each w, ``--per_class``
samples of every class from the score model guided by s + w grad log p_t(y | x) (all w
with the same key), classified by an independent classifier (scikit-learn logistic
regression on the real training pixels, as ``benchmarks/guidance_accuracy.py``); the table
gives how often it returns the requested class (w = 0: the unguided model, where the rate
is the share of samples that happen to look like the label, ~10 %).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--score_config", default="configs/sgm_digits.py")
  parser.add_argument("--score_workdir", required=True)
  parser.add_argument("--classifier_config", default="configs/noise_classifier_digits.py")
  parser.add_argument("--classifier_workdir", required=True)
  parser.add_argument("--scales", default="0,0.5,1,2,4")
  parser.add_argument("--per_class", type=int, default=20)
  parser.add_argument("--method", default="dpm_solver_pp")
  parser.add_argument("--num_steps", type=int, default=20)
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks.guidance_accuracy import train_classifier
  from lsgm_jax import guidance, samplers, train
  from lsgm_jax.methods.noise_classifier import EVAL_TIMES
  from lsgm_jax.train import Experiment
  from tests.helpers import load_config

  # Accuracy vs t of the noise classifier on the held-out split (its --mode=eval).
  cpath, _, cvariant = args.classifier_config.partition(":")
  clf_config = load_config(os.path.splitext(os.path.basename(cpath))[0], cvariant)
  metrics = train.evaluate(clf_config, args.classifier_workdir)
  print("noise classifier, held-out accuracy vs t (x_t from the VP kernel):\n")
  print("| t | " + " | ".join(f"{t:g}" for t in EVAL_TIMES) + " | t ~ U(eps, 1) |")
  print("|---|" + "---:|" * (len(EVAL_TIMES) + 1))
  print("| accuracy | " + " | ".join(f"{metrics[f'accuracy_t{t:g}']:.3f}" for t in EVAL_TIMES)
        + f" | {metrics['accuracy']:.3f} |\n", flush=True)

  # Sample class accuracy vs w, judged by an independent classifier.
  judge, judge_acc = train_classifier()
  path, _, variant = args.score_config.partition(":")
  config = load_config(os.path.splitext(os.path.basename(path))[0], variant)
  config.sampling.method = args.method
  config.sampling.num_steps = args.num_steps
  config.sampling.denoise = True
  exp = Experiment(config, args.score_workdir)
  state, step, _ = exp.restore_for_inference()
  method = exp.method
  classifier = guidance.load_classifier(args.classifier_workdir, method.sde)
  num = 10 * args.per_class
  labels = guidance.sample_labels((), num, 10)
  sampler = samplers.get_sampler(args.method)
  options = samplers.sampler_options(config.sampling, float(config.sampling.eps))

  @jax.jit
  def guided_samples(params, w, rng):  # w is traced: one program for every scale
    score = guidance.guided_score_fn(method.sde, method.score_fn(params, state.model_state),
                                     classifier.log_prob_fn(), labels, w)
    return sampler(rng, method.sde, score, (num,) + method.shape, **options)[0]

  print(f"guided samples of sgm_digits (step {step}), {args.method} with "
        f"{args.num_steps} steps, {args.per_class} per class (same key for every w); judge: "
        f"logistic regression (held-out accuracy {judge_acc:.3f}).\n")
  print("| w | requested class (judge) | mean judge confidence in it | s |")
  print("|---:|---:|---:|---:|")
  labels_np = np.asarray(labels)
  for w in [float(v) for v in args.scales.split(",")]:
    start = time.perf_counter()
    x = guided_samples(state.ema_params, jnp.float32(w), jax.random.PRNGKey(1))
    x = np.asarray(jax.block_until_ready(x)).reshape(num, -1)
    seconds = time.perf_counter() - start
    proba = judge.predict_proba(np.clip(x, -1.0, 1.0))
    acc = float(np.mean(np.argmax(proba, -1) == labels_np))
    conf = float(np.mean(proba[np.arange(num), labels_np]))
    print(f"| {w:g} | {acc:.3f} | {conf:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
  main()
