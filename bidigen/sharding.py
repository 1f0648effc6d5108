"""The one place that knows about the device mesh.

Mesh axes and logical axis rules come from the config; modules only name
their parameters' axes. Batches are assembled from per-process data with
``jax.make_array_from_process_local_data``.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axes: Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from (name, size) pairs; one size may be -1 (the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  names = [name for name, _ in axes]
  sizes = [size for _, size in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {axes}: at most one axis may have size -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if len(devices) % fixed:
    raise ValueError(
        f"mesh {axes} does not fit {len(devices)} devices")
  sizes = [len(devices) // fixed if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {axes} needs {int(np.prod(sizes))} devices, "
                     f"{len(devices)} are present")
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(mesh: Mesh, abstract_tree: Any, rules) -> Any:
  """Shardings for a (boxed) pytree from its logical axis names."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, [tuple(r) for r in rules])


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict:
  """Makes global arrays, batch-sharded, from this process's numpy slices."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}


def check_batch(mesh: Mesh, global_batch_size: int) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
        f"batch size {global_batch_size} is not divisible by the {n} devices "
        "of the mesh")
