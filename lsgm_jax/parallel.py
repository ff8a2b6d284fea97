"""Devices, meshes and shardings: multi-host init, the ("data", "fsdp") mesh, batch and
parameter shardings, and host-local -> global arrays.

Only ``jax.sharding`` is used (no pmap): the train step is one ``jax.jit`` whose
in/out shardings come from here, and XLA inserts the collectives.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")  # the batch is split over both mesh axes


def maybe_initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
  """Calls ``jax.distributed.initialize`` when this job has more than one process.

  Explicit flags win; otherwise the cluster is auto-detected (TPU pod slices through
  the TPU metadata, SLURM through SLURM_* variables), which jax does itself when called
  without arguments. Returns whether distributed mode is on.
  """
  if coordinator_address:
    if num_processes <= 0 or process_id < 0:
      raise ValueError(
          "--coordinator_address needs --num_processes and --process_id as well")
    # Collectives between CPU processes (the multi-host tests); only the CPU client reads
    # this flag. Querying the backend here would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if slurm_tasks > 1 or "," in tpu_hosts:
    jax.distributed.initialize()
    return True
  return False


def make_mesh(parallel_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """Builds the ("data", "fsdp") mesh; an axis of size -1 takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, fsdp = int(parallel_config.data), int(parallel_config.fsdp)
  if data == -1 and fsdp == -1:
    raise ValueError("config.parallel: at most one of data, fsdp may be -1")
  if data == -1:
    if n % fsdp:
      raise ValueError(f"config.parallel.fsdp={fsdp} does not divide {n} devices")
    data = n // fsdp
  if fsdp == -1:
    if n % data:
      raise ValueError(f"config.parallel.data={data} does not divide {n} devices")
    fsdp = n // data
  if data * fsdp != n:
    raise ValueError(
        f"config.parallel: data={data} x fsdp={fsdp} != {n} available devices")
  # Process-major device order keeps each host's devices contiguous on the data axis, so
  # a host's local batch rows land on its own devices.
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices).reshape(data, fsdp), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device; other axes replicated."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """FSDP rule: shard the largest axis divisible by the fsdp size, if the leaf is big."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for axis in order:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp_min_size: int) -> Any:
  """Shardings for every leaf of the train state: FSDP for big arrays, else replicated."""
  fsdp_size = mesh.shape["fsdp"]

  def leaf_sharding(leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, _param_spec(shape, fsdp_size, fsdp_min_size))

  return jax.tree.map(leaf_sharding, abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from every process's local rows (process-major)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def log_process_layout(mesh: Mesh) -> None:
  """Each process's devices (multi-process jobs; the start banner covers one process)."""
  if jax.process_count() == 1:
    return
  logging.info(
      "process %d/%d: %d local / %d global devices (%s); mesh %s",
      jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), jax.default_backend(), dict(mesh.shape))
