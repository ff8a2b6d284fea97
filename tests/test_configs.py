"""Every config file and variant loads, passes the checks, and inits abstractly."""

import glob
import os

import jax
import pytest

from lsgm_jax import config_checks, data, methods
from tests.helpers import REPO, load_config

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def all_variants():
  import importlib.util
  for path in CONFIG_FILES:
    name = os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(f"variants_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "VARIANTS"), f"configs/{name}.py must list its VARIANTS"
    for variant in module.VARIANTS:
      yield name, variant


@pytest.mark.parametrize("name,variant", list(all_variants()))
def test_config_inits_through_eval_shape(name, variant):
  config = load_config(name, variant)
  config_checks.check_config(config)
  method = methods.build_method(config, data.dataset_info(config.data))
  abstract = jax.eval_shape(method.init_state, jax.random.PRNGKey(0))
  num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  assert num_params > 0
  assert config.training.batch_size % config.training.num_microbatches == 0


def test_configs_are_locked():
  config = load_config("sgm_toy")
  with pytest.raises(AttributeError, match="does not exist"):
    config.training.bach_size = 3
