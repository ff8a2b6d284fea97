"""Datasets: TFDS pipelines and embedded data (2-D toys, 8x8 digits), sharded per process.

Public interface (what ``lsgm_jax.train`` calls):

* ``dataset_info(config.data) -> DatasetInfo``
* ``make_train_iterator(config.data, *, global_batch_size, seed, start_position=0,
  process_index=0, process_count=1)``: infinite, resumable, this process's rows.
* ``check_train_data(config.data)``: a missing TFDS dataset's error, before compiling.
* ``make_eval_iterator(config.data, *, global_batch_size, process_index=0,
  process_count=1)``: one padded pass over the held-out split, with a ``mask``.

``config.data.name`` is one of ``ALL_DATASETS``: swiss_roll, diamond, digits (embedded;
no download) and cifar10, celeb_a_hq, mnist, binarized_mnist, omniglot, lsun_church,
lsun_bedroom, imagenet256 (TFDS; TensorFlow is imported only for these).
"""

from lsgm_jax.data.catalog import ALL_DATASETS, EMBEDDED_DATASETS, TFDS_DATASETS, TOY_DATASETS
from lsgm_jax.data.config import DataConfig, DatasetInfo, as_data_config
from lsgm_jax.data.pipeline import (check_train_data, dataset_info, make_eval_iterator,
                                    make_train_iterator)
from lsgm_jax.data.preprocessing import to_unit_interval

__all__ = [
    "ALL_DATASETS", "EMBEDDED_DATASETS", "TFDS_DATASETS", "TOY_DATASETS", "DataConfig",
    "DatasetInfo", "as_data_config", "check_train_data", "dataset_info", "make_eval_iterator",
    "make_train_iterator", "to_unit_interval",
]
