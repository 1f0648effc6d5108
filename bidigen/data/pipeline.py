"""The grain input pipeline over TFDS array_record data sources.

One record order, shuffled deterministically from the seed, is cut into
global batches; each process reads its own rows of each (ShardOptions from
the JAX process index), so the global batches are the same however many
processes share them. The loader is a `grain.DataLoader`,
whose iterator state goes into the orbax checkpoint
(`grain.checkpoint.CheckpointSave` / `CheckpointRestore`), so a resumed run
continues the same stream. Reading needs no TensorFlow.
"""

from typing import Any

import grain
import jax
import numpy as np

_TEXT = ("caption", "background", "source")
PREPARE_COMMAND = ("python -m bidigen.main --config=configs/synthetic.py "
                   "--mode=prepare --workdir=DIR")


class _Decode(grain.transforms.Map):
  """Text arrives as bytes and scalars as python ints (which would batch to
  int64): give batches str and the dtypes the builder declares."""

  def __init__(self, dtypes: dict[str, np.dtype]):
    self._dtypes = dtypes

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.decode() if isinstance(v, bytes) else str(v))
            if k in _TEXT else np.asarray(v, self._dtypes[k])
            for k, v in element.items()}


class _ProcessRows:
  """One record order for all processes: process i of n reads rows
  i*b..(i+1)*b of each global batch of n*b, so the global batch does not
  depend on how many processes share it (and each reads only its rows).

  The DataLoader asks for index m*n + i (row m of process i); several
  processes keep whole global batches only.
  """

  def __init__(self, sampler, local_batch: int, shard_count: int):
    self._sampler, self._b, self._n = sampler, local_batch, shard_count
    self._len = len(sampler)
    if shard_count > 1:
      self._len -= self._len % (local_batch * shard_count)

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    return f"_ProcessRows({self._sampler!r}, {self._b}, {self._n})"

  def __getitem__(self, index: int):
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range [0, {self._len})")
    m, i = divmod(index, self._n)
    b = self._b
    return self._sampler[(m // b) * b * self._n + i * b + m % b]


def num_examples(builder, split: str) -> int:
  """Examples in ``split``, from the prepared dataset's metadata."""
  return builder.info.splits[split].num_examples


def require_prepared(builder) -> None:
  """Fails early, naming where data was looked for and how to make it.

  Raises:
    FileNotFoundError: the dataset has not been generated in its data_dir.
  """
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"dataset {builder.name}/{builder.builder_config.name} is not "
        f"prepared in {builder.data_dir}: run `{PREPARE_COMMAND}`")


def make_loader(builder, split: str, *, global_batch_size: int, seed: int,
                shuffle: bool = True, num_epochs: int | None = None,
                drop_remainder: bool = True, worker_count: int = 0,
                shard_index: int | None = None,
                shard_count: int | None = None) -> grain.DataLoader:
  """Batches of this process's shard of ``split``.

  Each batch is a dict of numpy arrays with a leading axis of
  global_batch_size // shard_count; ``caption`` and ``background`` are arrays
  of str. The order depends only on ``seed`` (and the epoch), so two runs with
  the same seed see the same batches and a restored iterator resumes exactly.

  Args:
    builder: a prepared TFDS builder (array_record).
    split: "train" or "test".
    global_batch_size: batch size summed over processes.
    seed: shuffling seed.
    shuffle: shuffle records (per epoch).
    num_epochs: None repeats forever.
    drop_remainder: drop a last partial batch.
    worker_count: grain worker processes; 0 reads in this process.
    shard_index: defaults to jax.process_index(); overridable for tests.
    shard_count: defaults to jax.process_count().

  Raises:
    ValueError: global_batch_size is not divisible by shard_count.
  """
  require_prepared(builder)
  source = builder.as_data_source(split=split)
  dtypes = {k: f.np_dtype for k, f in builder.info.features.items()}
  return loader(source, _Decode(dtypes), global_batch_size=global_batch_size,
                seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                drop_remainder=drop_remainder, worker_count=worker_count,
                shard_index=shard_index, shard_count=shard_count)


def loader(source, decode: grain.transforms.Map, *, global_batch_size: int,
           seed: int, shuffle: bool = True, num_epochs: int | None = None,
           drop_remainder: bool = True, worker_count: int = 0,
           shard_index: int | None = None,
           shard_count: int | None = None) -> grain.DataLoader:
  """Batches of any random-access ``source`` whose records ``decode`` turns
  into dicts of arrays: the TFDS data above, or the latent cache
  (``bidigen.latents``). Arguments as ``make_loader``."""
  shard_count = jax.process_count() if shard_count is None else shard_count
  shard_index = jax.process_index() if shard_index is None else shard_index
  if global_batch_size % shard_count:
    raise ValueError(f"global batch size {global_batch_size} is not "
                     f"divisible by the {shard_count} processes")
  local_batch = global_batch_size // shard_count
  sampler = _ProcessRows(grain.samplers.IndexSampler(
      num_records=len(source), shuffle=shuffle, seed=seed,
      num_epochs=num_epochs), local_batch, shard_count)
  return grain.DataLoader(
      data_source=source, sampler=sampler, worker_count=worker_count,
      shard_options=grain.sharding.ShardOptions(
          shard_index=shard_index, shard_count=shard_count,
          drop_remainder=True),
      operations=[decode, grain.transforms.Batch(
          local_batch, drop_remainder=drop_remainder)])
