"""The one place that knows about processes and the device mesh.

Mesh axes and logical axis rules come from the config; modules only name
their parameters' axes. Batches are assembled from per-process data with
``jax.make_array_from_process_local_data``.
"""

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def on_cluster() -> bool:
  """Whether ``jax.distributed.initialize()`` can find its peers here.

  These are the environments jax detects by itself (a coordinator address in
  the environment, a Cloud TPU VM, a Slurm job step, Open MPI); on a plain
  machine initialize() would fail for want of a coordinator.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  # A one-task job stays one process: jax would show it one GPU only.
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
           "SLURM_LOCALID")
  if all(k in env for k in slurm) and int(env.get("SLURM_NTASKS", 1)) > 1:
    return True
  if ("OMPI_MCA_orte_hnp_uri" in env
      and int(env.get("OMPI_COMM_WORLD_SIZE", 2)) > 1):
    return True
  try:  # Set by jax's import on TPU VMs; private, hence the guard.
    from jax._src import cloud_tpu_init
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  except (ImportError, AttributeError):
    return False


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run; call before anything touches devices.

  Explicit values (launch/gpu_multinode.sh passes all three) win; without
  them jax reads the cluster's environment, and a plain machine stays one
  process.
  """
  given = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in given):
    jax.distributed.initialize(*given)
  elif on_cluster():
    jax.distributed.initialize()


def make_mesh(axes: Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from (name, size) pairs; one size may be -1 (the rest).

  ``jax.make_mesh`` orders the devices for the chip's interconnect. On
  several TPU slices (devices with distinct ``slice_index``) the "data" axis
  spans the slices over the data-centre network and every other axis stays
  within a slice (``mesh_utils.create_hybrid_device_mesh``): only gradients'
  all-reduce crosses slices, the FSDP gathers never do.
  """
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
  # Auto axes: shardings come from the logical rules, not from types.
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices == 1:
    return jax.make_mesh(sizes, names, auto, devices=devices)
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  ici, dcn = hybrid_shapes(names, sizes, slices)
  return Mesh(mesh_utils.create_hybrid_device_mesh(ici, dcn, devices), names,
              axis_types=auto)


def hybrid_shapes(names: Sequence[str], sizes: Sequence[int],
                  slices: int) -> tuple[list[int], list[int]]:
  """(within-slice shape, across-slice shape) of a mesh over ``slices``
  slices: the "data" axis is split across them."""
  if "data" not in names or sizes[list(names).index("data")] % slices:
    raise ValueError(f"a mesh over {slices} slices needs a 'data' axis whose "
                     f"size is a multiple of {slices}; got "
                     f"{dict(zip(names, sizes))}")
  dcn = [slices if n == "data" else 1 for n in names]
  return [s // d for s, d in zip(sizes, dcn)], dcn


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(mesh: Mesh, abstract_tree: Any, rules) -> Any:
  """Shardings for a (boxed) pytree from its logical axis names.

  A dimension the rules would split unevenly (an RGB output conv's 3
  channels over fsdp=8) stays whole: jit refuses uneven shardings.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh,
                                          [tuple(r) for r in rules])
  return jax.tree.map(lambda s, a: _even(s, a.shape), shardings,
                      nn.unbox(abstract_tree))


def _even(sharding: NamedSharding, shape) -> NamedSharding:
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  for i, axes in enumerate(spec):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    if shape[i] % math.prod(sharding.mesh.shape[n] for n in names):
      spec[i] = None
  return NamedSharding(sharding.mesh, P(*spec))


def bytes_per_device(tree: Any) -> int:
  """Bytes of the largest shard of each leaf, summed: what one device holds
  of a pytree of sharded arrays or ShapeDtypeStructs."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
             for a in jax.tree.leaves(tree))


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


def in_batches(fn, size: int, *arrays) -> np.ndarray:
  """``fn`` over the arrays' leading axis in chunks of exactly ``size``
  rows, the last chunk padded with copies of its last row, so one compiled
  program serves every chunk (and a batch split over the mesh stays the
  same split); the results' real rows, concatenated."""
  arrays = [np.asarray(a) for a in arrays]  # Once, not per chunk.
  n = len(arrays[0])
  if n == 0 or any(len(a) != n for a in arrays):
    raise ValueError(
        f"in_batches: arrays of lengths {[len(a) for a in arrays]}")
  out = []
  for i in range(0, n, size):
    k = min(size, n - i)
    chunk = [np.concatenate([a[i:i + k], np.repeat(a[i + k - 1:i + k],
                                                   size - k, 0)])
             for a in arrays]
    out.append(np.asarray(fn(*chunk))[:k])
  return np.concatenate(out)
