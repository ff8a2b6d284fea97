"""Tests of the score networks: pinned parameter counts, shapes, dtypes, init behaviour.

Paper-size models are only traced with ``jax.eval_shape`` (no allocation, no compute);
forward passes use tiny configurations so the file runs in well under a minute on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsgm_jax.models import layers
from lsgm_jax.models.mlp import ScoreMLP


def _count_params(model, *inputs) -> int:
  """Trainable parameter count of ``model`` via ``jax.eval_shape`` (nothing allocated)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


# ------------------------------------------------------------------------ MLP

def test_cld_toy_mlp_param_count():
  # CLD-SGM configs/default_toy_data.txt: (x, v, t) -> 128 x4 -> 2 (REFERENCE_NOTES.md).
  model = ScoreMLP(hidden=128, num_hidden_layers=4, out_dim=2, time_input="raw")
  assert _count_params(model, jnp.zeros((2, 4)), jnp.zeros((2,))) == 50_562


@pytest.mark.parametrize("time_input", ["raw", "fourier", "positional"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_mlp_forward(time_input, dtype):
  model = ScoreMLP(hidden=32, num_hidden_layers=2, time_input=time_input, dtype=dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  t = jnp.linspace(0.01, 1.0, 5)
  variables = model.init(jax.random.PRNGKey(0), x, t)
  assert set(variables) == {"params"}
  out = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert out.shape == (5, 2) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  # The time input matters.
  out2 = model.apply(variables, x, t * 0.5)
  assert not np.allclose(np.asarray(out), np.asarray(out2))


def test_mlp_rejects_unknown_time_input():
  model = ScoreMLP(time_input="learned")
  with pytest.raises(ValueError, match="time_input"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
