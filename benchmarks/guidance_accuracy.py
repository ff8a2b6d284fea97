"""Does classifier-free guidance (latent VAE paper, eq. 2) make class-conditional samples
more recognisable? Classifier accuracy on samples of a trained latent_vae_digits model.

  python -m lsgm_jax.main --config=configs/latent_vae_digits.py:pixel \
      --workdir=runs/lv_digits_pixel
  python benchmarks/guidance_accuracy.py --config=configs/latent_vae_digits.py:pixel \
      --workdir=runs/lv_digits_pixel --weights=0:0,0.5:1,1:1,1.5:3,3:3

A digits classifier (scikit-learn logistic regression on the 8x8 pixels in [-1, 1]) is
trained here on the real training split (no shipped weights) and checked on the
held-out split. The EMA params of the newest checkpoint then draw ``--per_class``
samples of every class for each (w_mu, w_sigma), all with the same key (so the pairs
share their noise), decoded through the first stage when the config names one; the
table gives how often the classifier returns the requested class.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_classifier():
  """Logistic regression on the digits training split; (model, held-out accuracy)."""
  import numpy as np
  from sklearn.linear_model import LogisticRegression
  from lsgm_jax.data import embedded

  from lsgm_jax.data import catalog

  train_x, train_y, eval_x, eval_y = embedded.digits_split()

  def features(levels):  # the model's space: (level + u) / 17 * 2 - 1, at u = 1/2
    x = (levels.reshape(len(levels), -1) + 0.5) / (catalog.DIGITS_MAX_LEVEL + 1)
    return (2.0 * x - 1.0).astype(np.float32)

  clf = LogisticRegression(max_iter=2000, C=1.0)
  clf.fit(features(train_x), train_y)
  return clf, float(clf.score(features(eval_x), eval_y))


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/latent_vae_digits.py:pixel")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--weights", default="0:0,0.5:1,1:1,1.5:3,3:3",
                      help="comma-separated w_mu:w_sigma pairs")
  parser.add_argument("--per_class", type=int, default=200)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--override", action="append", default=[],
                      help="config override a.b=value (repeatable)")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks.train_step import load_config
  from lsgm_jax import train

  clf, held_out_acc = train_classifier()
  print(f"classifier: logistic regression on the 1500 training digits, held-out "
        f"accuracy {held_out_acc:.3f}")

  config = load_config(args.config, args.override)
  exp = train.Experiment(config, args.workdir, devices=jax.devices()[:1])
  state, step, _ = exp.restore_for_inference()
  method = exp.method
  classes = method.hvae_config.num_classes
  labels = jnp.repeat(jnp.arange(classes, dtype=jnp.int32), args.per_class)
  variables = {"params": state.ema_params, **state.model_state}

  @jax.jit
  def draw(key, w_mu, w_sigma):
    # Traced weights: one compiled guided sampler for every pair; (0, 0) is exactly the
    # conditional sampler (tests/test_latent_vae.py).
    z = method.model.apply(variables, key, labels.shape[0], labels, guided=True,
                           w_mu=w_mu, w_sigma=w_sigma, temperature=args.temperature,
                           guide_mean_at_1x1=bool(config.latent_vae.guide_mean_at_1x1),
                           method=type(method.model).sample)
    return method.decode(z)

  key = jax.random.PRNGKey(args.seed)
  rows = []
  for pair in args.weights.split(","):
    w_mu, w_sigma = (float(v) for v in pair.split(":"))
    t0 = time.time()
    images = np.asarray(draw(key, jnp.float32(w_mu), jnp.float32(w_sigma)))
    seconds = time.time() - t0
    flat = np.clip(images.reshape(len(images), -1), -1.0, 1.0)
    pred = clf.predict(flat)
    acc = float(np.mean(pred == np.asarray(labels)))
    per_class = [float(np.mean(pred[labels == c] == c)) for c in range(classes)]
    rows.append({"w_mu": w_mu, "w_sigma": w_sigma, "accuracy": acc,
                 "worst_class": float(min(per_class)), "seconds": seconds})

  print(f"\nworkdir {args.workdir} (step {step}), {args.per_class} samples per class, "
        f"temperature {args.temperature}, seed {args.seed}\n")
  print("| w_mu | w_sigma | classifier accuracy | worst class |")
  print("|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['w_mu']:g} | {r['w_sigma']:g} | {r['accuracy']:.3f} | "
          f"{r['worst_class']:.3f} |")
  return rows


if __name__ == "__main__":
  main()
