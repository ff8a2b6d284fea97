"""Sample quality vs NFE of a trained 2-D model, for several samplers.

  python -m lsgm_jax.main --config=configs/cld_toy.py --workdir=runs/cld_toy
  python benchmarks/sampler_quality.py --config=configs/cld_toy.py --workdir=runs/cld_toy \
      --samplers=sscs,euler_maruyama --nfe=20,50,100,200

Restores the EMA params of the newest checkpoint, draws ``--num`` samples per (sampler,
NFE) with the same seed, and prints a markdown table of MMD and sliced Wasserstein to
held-out data, next to the same distances between two independent held-out draws (the
floor a perfect model reaches at this sample size). NFE counts score evaluations: N
steps plus the final denoising step.

``--prior_draws=N`` adds a row for N draws from the SDE's prior (N(0, I) for VP / sub-VP)
against the same held-out points, the distance of "no model at all"; with an empty
``--samplers=`` nothing is restored and ``--workdir`` may be left out:

  python benchmarks/sampler_quality.py --config=configs/sgm_toy.py --samplers= \
      --num=2000 --prior_draws=1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", default="", help="needed unless --samplers is empty")
  parser.add_argument("--samplers", default="sscs,euler_maruyama")
  parser.add_argument("--nfe", default="20,50,100,200")
  parser.add_argument("--num", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--prior_draws", type=int, default=0,
                      help="also score this many draws from the SDE's prior (0: no row)")
  args = parser.parse_args(argv)
  samplers = [s for s in args.samplers.split(",") if s]
  if samplers and not args.workdir:
    parser.error("--workdir is required when --samplers is not empty")

  import jax

  from benchmarks.train_step import load_config
  from lsgm_jax import data, methods, train
  from lsgm_jax.evaluation import distances

  config = load_config(args.config, [])
  config.sampling.batch_size = args.num
  held_out = next(data.make_eval_iterator(config.data, global_batch_size=2 * args.num))["x"]
  reference, other = held_out[:args.num], held_out[args.num:]
  floor_mmd = distances.mmd_rbf(other, reference)
  floor_swd = distances.sliced_wasserstein(other, reference)
  rows = []
  if args.prior_draws:
    method = methods.build_method(config, data.dataset_info(config.data))
    start = time.perf_counter()
    prior = method.sde.prior_sample(jax.random.PRNGKey(args.seed),
                                    (args.prior_draws,) + tuple(reference.shape[1:]))
    rows.append(dict(sampler=f"{args.prior_draws} prior draws", nfe=0,
                     seconds=time.perf_counter() - start,
                     mmd=distances.mmd_rbf(prior, reference),
                     swd=distances.sliced_wasserstein(prior, reference)))
  for sampler in samplers:
    for nfe in (int(n) for n in args.nfe.split(",")):
      config.sampling.method = sampler
      config.sampling.num_steps = nfe - 1 if config.sampling.denoise else nfe
      exp = train.Experiment(config, args.workdir)
      state, _, _ = exp.restore_for_inference()
      start = time.perf_counter()
      samples, info = train.generate_samples(exp, state, args.num, args.seed)
      seconds = time.perf_counter() - start
      rows.append(dict(sampler=sampler, nfe=int(info["nfe"]), seconds=seconds,
                       mmd=distances.mmd_rbf(samples, reference),
                       swd=distances.sliced_wasserstein(samples, reference)))
  print(f"\n{args.config}, {args.num} samples; data vs data: MMD {floor_mmd:.4f}, "
        f"SWD {floor_swd:.4f}\n")
  print("| sampler | NFE | MMD | sliced W1 | seconds (incl. compile) |")
  print("|---|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['sampler']} | {r['nfe']} | {r['mmd']:.4f} | {r['swd']:.4f} | "
          f"{r['seconds']:.1f} |")
  return rows


if __name__ == "__main__":
  main()
