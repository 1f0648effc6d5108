"""The grain input pipeline over TFDS array_record data sources.

Each process reads its own shard (ShardOptions from the JAX process index),
shuffled deterministically from the seed; the iterator's state goes into the
orbax checkpoint so a resumed run continues the same stream.
"""

import grain
import jax
import numpy as np

_TEXT = ("caption", "background")


class _Decode(grain.transforms.Map):
  """Text features arrive as bytes; the rest as numpy already."""

  def map(self, element):
    return {k: (v.decode() if k in _TEXT and isinstance(v, bytes) else v)
            for k, v in element.items()}


def num_examples(builder, split: str) -> int:
  return builder.info.splits[split].num_examples


def require_prepared(builder) -> None:
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"dataset {builder.name}/{builder.builder_config.name} is not "
        f"prepared in {builder.data_dir}: run `python -m bidigen.main "
        "--config=configs/synthetic.py --mode=prepare`")


def make_loader(builder, split: str, *, global_batch_size: int, seed: int,
                shuffle: bool = True, num_epochs: int | None = None,
                drop_remainder: bool = True, shard_index: int | None = None,
                shard_count: int | None = None,
                worker_count: int = 0) -> grain.DataLoader:
  """Batches of this process's shard: dicts of numpy arrays (text as str)."""
  shard_count = jax.process_count() if shard_count is None else shard_count
  shard_index = jax.process_index() if shard_index is None else shard_index
  if global_batch_size % shard_count:
    raise ValueError(f"batch size {global_batch_size} is not divisible by "
                     f"the {shard_count} processes")
  source = builder.as_data_source(split=split)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shuffle=shuffle, seed=seed,
      num_epochs=num_epochs,
      shard_options=grain.sharding.ShardOptions(
          shard_index=shard_index, shard_count=shard_count,
          drop_remainder=True))
  return grain.DataLoader(
      data_source=source, sampler=sampler, worker_count=worker_count,
      operations=[_Decode(), grain.transforms.Batch(
          global_batch_size // shard_count, drop_remainder=drop_remainder)])
