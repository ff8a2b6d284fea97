"""Sampler benchmark on Gaussian data with the exact score: NFE, time and error.

Data x0 ~ N(mu, diag(s^2)) in D dimensions; every sampler gets the exact score of p_t
(``lsgm_jax.sde.gaussian``), so its only errors are discretisation and Monte Carlo.
Error: the 2-Wasserstein distance between the diagonal Gaussian fitted to the samples
(per-dimension mean and std) and the truth, W2^2 = sum_d (m_d - mu_d)^2 + (sd_d - s_d)^2.
The "exact samples" row is the Monte-Carlo floor of that estimate at this sample size.

Prints two markdown tables (paste into BENCHMARKS.md): every sampler on its SDE, and
CLD's SSCS against Euler-Maruyama at NFE 20, 50, 100, 200 (CLD paper, Sec. 3.3 / Fig. on
SSCS vs EM). Run: ``python benchmarks/samplers.py`` (CPU, under 3 minutes).

``--nfe_table`` prints instead the issue-13 table: W2 error against NFE 10, 20, 40, 80 for
every sampler on every SDE, with the fitted convergence order, in float64 on the
2-dimensional harness of tests/test_fast_samplers.py (mu = (0.5, -1), s = (0.3, 0.8)),
started from the exact p_T (``exact_prior_sde``) so that the continuous-time limit is
exactly p_eps. Deterministic samplers are affine maps per dimension on Gaussian data, so
their output law is computed exactly from two starting points; stochastic ones are
estimated from ``--samples`` draws (standard error of the W2 estimate ~ s / sqrt(n)).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lsgm_jax.samplers import get_sampler  # noqa: E402
from lsgm_jax.sde import CLD, VESDE, VPSDE, SubVPSDE  # noqa: E402
from lsgm_jax.sde.gaussian import gaussian_score_fn  # noqa: E402


def w2_error(x: np.ndarray, mu: np.ndarray, s: np.ndarray) -> float:
  """W2 between N(mean(x), diag(std(x)^2)) and N(mu, diag(s^2))."""
  x = np.asarray(x, np.float64)
  return float(np.sqrt(np.sum((x.mean(0) - mu)**2 + (x.std(0) - s)**2)))


def run(name: str, sde, score_fn, shape, options: dict, mu, s, timed: bool = True) -> dict:
  """First call (compile + run); with ``timed``, a second call with a new key is timed."""
  sampler = get_sampler(name)
  start = time.perf_counter()
  x, info = sampler(jax.random.PRNGKey(0), sde, score_fn, shape, **options)
  jax.block_until_ready(x)
  compile_s = time.perf_counter() - start
  if not timed:
    return dict(nfe=int(info["nfe"]), w2=w2_error(x, mu, s))
  start = time.perf_counter()
  x, info = sampler(jax.random.PRNGKey(1), sde, score_fn, shape, **options)
  jax.block_until_ready(x)
  run_s = time.perf_counter() - start
  return dict(nfe=int(info["nfe"]), compile_s=compile_s, run_s=run_s,
              w2=w2_error(x, mu, s))


NFES = (10, 20, 40, 80)


def nfe_table(samples: int) -> None:
  """W2 vs NFE for all samplers and SDEs (float64; see the module docstring)."""
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # noqa: PLC0415
  from lsgm_jax.samplers.scaled_view import edm_sigma  # noqa: PLC0415
  from lsgm_jax.sde.gaussian import (cld_marginal_moments, exact_prior_sde,  # noqa: PLC0415
                                     marginal_moments)
  mu, s, eps = (0.5, -1.0), (0.3, 0.8), 1e-3
  mu_a, s_a = np.asarray(mu), np.asarray(s)
  sdes = {"VP": VPSDE(), "sub-VP": SubVPSDE(), "VE": VESDE(sigma_min=0.01, sigma_max=20.0),
          "CLD": CLD()}

  def target(sde, name):
    t = jnp.full((1,), eps)
    if isinstance(sde, CLD):
      mean_x, _, (sxx, _, _), _ = cld_marginal_moments(sde, t, jnp.zeros((1, 2)), mu_a, s_a)
      return np.asarray(mean_x[0]), np.sqrt(np.asarray(sxx[0]))
    if name == "heun":  # exact flow to sigma(eps), then Tweedie to sigma = 0
      sig = float(edm_sigma(sde, jnp.asarray([eps]))[0])
      return mu_a, s_a**2 / np.sqrt(s_a**2 + sig**2)
    mean, var = marginal_moments(sde, t, jnp.zeros((1, 2)), mu_a, s_a)
    return np.asarray(mean[0]), np.sqrt(np.asarray(var[0]))

  rows = [
      # (sampler, label, options, SDEs, deterministic, NFE per step)
      ("euler_maruyama", "Euler-Maruyama", {}, ("VP", "sub-VP", "VE", "CLD"), False, 1),
      ("ddim", "DDIM eta=0", {}, ("VP", "sub-VP", "VE"), True, 1),
      ("ddim", "DDIM eta=1", dict(eta=1.0), ("VP", "sub-VP", "VE"), False, 1),
      ("heun", "EDM Heun (rho=7)", {}, ("VP", "sub-VP", "VE"), True, 2),
      ("dpm_solver_pp", "DPM-Solver++(2M) logSNR", dict(schedule="logSNR"),
       ("VP", "sub-VP", "VE"), True, 1),
      ("dpm_solver_pp", "DPM-Solver++(3M) logSNR", dict(schedule="logSNR", order=3),
       ("VP", "sub-VP", "VE"), True, 1),
      ("dpm_solver_pp", "DPM-Solver++(2M) time_uniform", dict(schedule="time_uniform"),
       ("VP", "sub-VP"), True, 1),
      ("sscs", "SSCS (order 1), quadratic", dict(striding="quadratic"), ("CLD",), False, 1),
      ("sscs", "SSCS order 2 (Heun S-step), quadratic", dict(striding="quadratic", order=2),
       ("CLD",), False, 2),
      ("sscs", "SSCS (order 1), linear", dict(striding="linear"), ("CLD",), False, 1),
      ("sscs", "SSCS order 2 (Heun S-step), linear", dict(striding="linear", order=2),
       ("CLD",), False, 2),
  ]
  print(f"W2 error vs NFE, exact score, exact p_T start, float64, "
        f"{jax.devices()[0].platform.upper()}; stochastic rows: {samples} samples "
        f"(Monte-Carlo floor ~{0.8 / np.sqrt(samples):.1e}).\n")
  print("| sampler | SDE | " + " | ".join(f"NFE {n}" for n in NFES) + " | fitted order |")
  print("|---|---|" + "---:|" * (len(NFES) + 1))
  for name, label, options, sde_names, deterministic, per_step in rows:
    for sde_name in sde_names:
      base = sdes[sde_name]
      sde = exact_prior_sde(base, mu, s, points=deterministic)
      score = gaussian_score_fn(sde, jnp.asarray(mu_a), jnp.asarray(s_a))
      tgt = target(base, name)
      nfes, errs = [], []
      for nfe in NFES:
        steps = nfe // per_step
        opts = dict(options, num_steps=steps, eps=eps)
        if name != "heun":
          opts["denoise"] = False
        shape = (2, 2) if deterministic else (samples, 2)
        x, info = get_sampler(name)(jax.random.PRNGKey(0), sde, score, shape, **opts)
        x = np.asarray(x, np.float64)
        if deterministic:
          mean, std = x[0], np.abs(x[1] - x[0])
        else:
          mean, std = x.mean(0), x.std(0)
        nfes.append(int(info["nfe"]))
        errs.append(float(np.sqrt(np.sum((mean - tgt[0])**2 + (std - tgt[1])**2))))
      order = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
      cells = " | ".join(f"{e:.2e}" + ("" if n == m else f" ({n})")
                         for e, n, m in zip(errs, nfes, NFES))
      print(f"| {label} | {sde_name} | {cells} | {order:.2f} |", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--samples", type=int, default=10_000)
  parser.add_argument("--dim", type=int, default=4)
  parser.add_argument("--nfe_table", action="store_true",
                      help="print the W2-vs-NFE table of all samplers and SDEs instead")
  args = parser.parse_args()
  if args.nfe_table:
    nfe_table(args.samples)
    return

  rng = np.random.default_rng(0)
  mu = rng.uniform(-1.0, 1.0, args.dim).astype(np.float32)
  s = rng.uniform(0.2, 0.8, args.dim).astype(np.float32)
  shape = (args.samples, args.dim)
  vp, subvp, ve, cld = VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0), CLD()
  scores = {sde: gaussian_score_fn(sde, mu, s) for sde in (vp, subvp, ve, cld)}

  print(f"Gaussian data, D = {args.dim}, {args.samples} samples, exact score, "
        f"float32, {jax.devices()[0].platform.upper()}, eps = 1e-3.\n")
  exact = mu + s * np.asarray(jax.random.normal(jax.random.PRNGKey(2), shape))
  print("| sampler | SDE | options | NFE | first call s (compile) | run s | W2 error |")
  print("|---|---|---|---:|---:|---:|---:|")
  print(f"| exact samples (MC floor) | - | - | 0 | - | - | {w2_error(exact, mu, s):.4f} |")
  rows = [
      ("euler_maruyama", vp, "VP", dict(num_steps=1000)),
      ("euler_maruyama", subvp, "sub-VP", dict(num_steps=1000)),
      ("euler_maruyama", ve, "VE", dict(num_steps=1000)),
      ("predictor_corrector", vp, "VP", dict(num_steps=500, n_corrector=1, snr=0.16)),
      ("predictor_corrector", ve, "VE", dict(num_steps=500, n_corrector=1, snr=0.16)),
      ("annealed_langevin", ve, "VE", dict(num_levels=100, n_steps_each=10, snr=0.3,
                                           denoise=True)),
      ("probability_flow_ode", vp, "VP", dict(rtol=1e-5, atol=1e-5)),
      ("probability_flow_ode", vp, "VP", dict(solver="heun", num_steps=100)),
      ("euler_maruyama", cld, "CLD", dict(num_steps=200, striding="quadratic")),
      ("sscs", cld, "CLD", dict(num_steps=200, striding="quadratic")),
  ]
  for name, sde, sde_name, options in rows:
    r = run(name, sde, scores[sde], shape, options, mu, s)
    opts = ", ".join(f"{k}={v}" for k, v in options.items())
    print(f"| {name} | {sde_name} | {opts} | {r['nfe']} | {r['compile_s']:.1f} | "
          f"{r['run_s']:.2f} | {r['w2']:.4f} |")

  print("\nCLD (beta = 4, M^-1 = 4, gamma = 0.04): W2 error of the x samples, "
        "SSCS vs Euler-Maruyama at equal NFE.\n")
  print("| NFE | striding | EM W2 | SSCS W2 | EM / SSCS |")
  print("|---:|---|---:|---:|---:|")
  for striding in ("linear", "quadratic"):
    for nfe in (20, 50, 100, 200):
      errs = {}
      for name in ("euler_maruyama", "sscs"):
        errs[name] = run(name, cld, scores[cld], shape,
                         dict(num_steps=nfe, striding=striding), mu, s, timed=False)["w2"]
      print(f"| {nfe} | {striding} | {errs['euler_maruyama']:.4f} | {errs['sscs']:.4f} | "
            f"{errs['euler_maruyama'] / errs['sscs']:.2f} |")


if __name__ == "__main__":
  main()
