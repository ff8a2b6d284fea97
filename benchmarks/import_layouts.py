"""Every paper model's reference state-dict layout imports completely (issue 12).

  python benchmarks/import_layouts.py

For CLD-SGM's three paper models (CIFAR-10, CelebA-HQ-256 paper and post-paper) and
score_sde's DDPM++ cont. (VP), the references' own state-dict keys and shapes
(tests/fixtures/cld_sgm_paper_layouts.json.gz, score_sde_vp_ddpmpp_layout.json.gz, written
by the reference code) are filled with zero-stride arrays (no memory), with an EMA list
and a torch Adam state of the same shapes, and converted against the matching config's
abstract state: every key must be consumed and every leaf filled. Prints the imported
trainable count next to the reference's and the seconds per model (the tests run the
CIFAR-10 models only; this covers the CelebA-HQ ones too).
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def zeros(shape):
  import numpy as np
  return np.broadcast_to(np.float32(0), tuple(shape))


def import_layout(config_name: str, keys, fixed, buffers) -> tuple[int, str]:
  """(imported trainable count, description) of one reference layout."""
  import jax
  from lsgm_jax import data, methods
  from lsgm_jax.checkpoint_import import cld_sgm
  module, _, variant = config_name.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  method = methods.build_method(config, data.dataset_info(config.data))
  target = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  model = {k: zeros(s) for k, s in keys}
  params = [k for k, _ in keys if k not in buffers]
  trainable = [k for k in params if k not in fixed]
  state = {i: {"step": 5.0, "exp_avg": model[k], "exp_avg_sq": model[k]}
           for i, k in enumerate(params) if k not in fixed}
  obj = {"model": model, "ema": {"shadow_params": [model[k] for k in trainable]},
         "optimizer": {"state": state, "param_groups": [{"params": list(range(len(params))),
                                                         "amsgrad": False}]},
         "step": 1}
  imported = cld_sgm.convert_training_file(obj, config, target, config_name,
                                           buffers=tuple(b[len("module."):] for b in buffers))
  count = sum(x.size for x in jax.tree.leaves(imported.params))
  return count, imported.description


def main() -> None:
  with gzip.open(os.path.join(FIXTURES, "cld_sgm_paper_layouts.json.gz"), "rt") as f:
    cld = json.load(f)
  with gzip.open(os.path.join(FIXTURES, "score_sde_vp_ddpmpp_layout.json.gz"), "rt") as f:
    ddpmpp = json.load(f)
  cases = [(name, e["keys"], {"module." + k for k in e["requires_grad"]}, set(),
            e["trainable"]) for name, e in cld.items()]
  cases.append(("vp_cifar_ddpmpp", ddpmpp["keys"], set(), set(ddpmpp["buffers"]),
                ddpmpp["trainable"]))
  for name, keys, fixed, buffers, reference in cases:
    t0 = time.perf_counter()
    count, description = import_layout(name, keys, fixed, buffers)
    status = "ok" if count == reference else "MISMATCH"
    print(f"{name:28s} imported {count:,} trainable, reference {reference:,}: {status} "
          f"({time.perf_counter() - t0:.1f} s; {description})")


if __name__ == "__main__":
  main()
