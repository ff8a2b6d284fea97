"""LSGM's central claim at CPU scale (issue 14, item 2): does the latent SGM beat the VAE's
N(0, I) prior when the aggregate posterior is clearly non-Gaussian?

For each seed: stage 1 (the NVAE with the N(0, I) prior, ``configs/lsgm_digits.py:vae``
with FEW latent channels, so that the aggregate posterior cannot stay Normal), then three
stage-2 runs from that same checkpoint, all with the same number of steps:

  vae       the N(0, I) control: stage 2 with the SGM switched off (mixing logit -1e9,
            SGM learning rate 0, no channel dropping): the identical VAE keeps training
            with the same optimiser and KL schedule;
  lsgm_vp   LSGM with the VP SDE (``lsgm``: ll_iw, one likelihood objective for p and q);
  lsgm_cld  latent CLD (``cld``: HSM, log-uniform t from 1e-5, SSCS);

then ``--mode=eval`` of each (held-out NELBO with the prior's NLL from the probability-flow
ODE; the CLD bound for latent CLD). It prints a table of mean and spread (sample std over
seeds) and whether each gap exceeds the spread.

  python benchmarks/lsgm_prior_gap.py --workdir=runs/prior_gap --seeds=0,1,2 \\
      --latent_channels=1 --vae_steps=3000 --vada_steps=2500

Each stage takes ~10-25 min on an idle 2-core CPU at these step counts (BENCHMARKS.md,
"LSGM on the binarised 8x8 digits"); ``--vae_steps`` / ``--vada_steps`` scale it down.
Runs that already have an evaluation file are skipped (the script can be resumed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ARMS = {
    "vae": ("lsgm", ["--config.lsgm.mixing_logit_init=-1e9", "--config.lsgm.dae_optim.lr=0",
                     "--config.lsgm.drop_inactive_var=False"]),
    "lsgm_vp": ("lsgm", []),
    "lsgm_cld": ("cld", []),
}


def _run(args: list[str], log_path: str) -> None:
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  with open(log_path, "a") as log:
    subprocess.run([sys.executable, "-m", "lsgm_jax.main"] + args, check=True, env=env,
                   stdout=log, stderr=subprocess.STDOUT)


def _latest_eval(workdir: str) -> dict | None:
  """The metrics ``--mode=eval`` wrote (``eval_step_<step>.json``, latest step), if any."""
  if not os.path.isdir(workdir):
    return None
  files = [f for f in os.listdir(workdir) if f.startswith("eval_step_") and f.endswith(".json")]
  if not files:
    return None
  latest = max(files, key=lambda f: int(f[len("eval_step_"):-len(".json")]))
  with open(os.path.join(workdir, latest)) as f:
    return json.load(f)


def _common(flags: argparse.Namespace, seed: int) -> list[str]:
  c = int(flags.latent_channels)
  # Exact trace in the ODE likelihood: 16 latent dims make it cheap, and the Hutchinson
  # probe is far too noisy for latent CLD (BENCHMARKS.md, issue 14).
  return [f"--config.seed={seed}", f"--config.lsgm.vae.num_latent_per_group={c}",
          "--config.lsgm.vae.num_groups_per_scale=1", "--config.eval.probe=exact"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/prior_gap")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--latent_channels", type=int, default=1)
  parser.add_argument("--vae_steps", type=int, default=3000)
  parser.add_argument("--vada_steps", type=int, default=2500)
  parser.add_argument("--arms", default=",".join(ARMS))
  flags = parser.parse_args()
  seeds = [int(s) for s in flags.seeds.split(",")]
  arms = flags.arms.split(",")
  os.makedirs(flags.workdir, exist_ok=True)
  results: dict[str, list[float]] = {a: [] for a in arms}
  for seed in seeds:
    stage1 = os.path.join(flags.workdir, f"stage1_s{seed}")
    common = _common(flags, seed)
    if not os.path.exists(os.path.join(stage1, "checkpoints")):
      t0 = time.time()
      _run(["--config=configs/lsgm_digits.py:vae", f"--workdir={stage1}",
            f"--config.training.num_train_steps={flags.vae_steps}"] + common,
           os.path.join(flags.workdir, f"stage1_s{seed}.log"))
      print(f"seed {seed}: stage 1 {time.time() - t0:.0f} s", flush=True)
    for arm in arms:
      variant, extra = ARMS[arm]
      wd = os.path.join(flags.workdir, f"{arm}_s{seed}")
      log = os.path.join(flags.workdir, f"{arm}_s{seed}.log")
      stage2 = [f"--config=configs/lsgm_digits.py:{variant}", f"--workdir={wd}",
                f"--config.lsgm.vae_checkpoint={stage1}",
                f"--config.training.num_train_steps={flags.vada_steps}"] + common + extra
      if _latest_eval(wd) is None:
        t0 = time.time()
        _run(stage2, log)
        _run(stage2 + ["--mode=eval"], log)
        print(f"seed {seed}: {arm} {time.time() - t0:.0f} s", flush=True)
      metrics = _latest_eval(wd)
      if metrics is None:
        raise RuntimeError(f"{wd}: --mode=eval wrote no eval_step_*.json (see {log})")
      results[arm].append(float(metrics["nelbo"]))
  print("\nheld-out NELBO (nats, latent ODE), mean +- sample std over seeds", seeds)
  stats = {}
  for arm, values in results.items():
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    stats[arm] = (mean, std)
    print(f"  {arm:9s} {mean:8.3f} +- {std:.3f}   {values}")
  if "vae" in stats:
    for arm in arms:
      if arm == "vae":
        continue
      gap = stats["vae"][0] - stats[arm][0]
      spread = max(stats["vae"][1], stats[arm][1])
      print(f"  gap vae - {arm}: {gap:+.3f} nats; exceeds the seed spread: {gap > spread}")


if __name__ == "__main__":
  main()
