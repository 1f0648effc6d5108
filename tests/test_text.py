"""Text encoders: the real pretrained MiniLM, and CLIP from a local folder."""

import json
import string

import numpy as np
import pytest

from bidigen import text


@pytest.fixture(scope="module")
def minilm():
  return text.load_text_encoder("minilm", max_length=16)


def pooled(encoder, prompt):
  emb, mask = encoder.encode([prompt])
  v = (emb[0] * mask[0, :, None]).sum(0) / mask[0].sum()
  return v / np.linalg.norm(v)


def test_minilm_shapes_mask_and_cache(minilm):
  emb, mask = minilm.encode(["a red ball moves left", "", "  "])
  assert emb.shape == (3, 16, 384) and emb.dtype == np.float32
  assert mask.shape == (3, 16)
  # [CLS] a red ball moves left [SEP] -> 7 tokens; "" -> [CLS][SEP].
  assert mask.sum(1).tolist() == [7, 2, 2]
  np.testing.assert_array_equal(emb[1], emb[2])  # Whitespace is empty.
  assert (emb[0][mask[0] == 0] == 0).all()
  again, _ = minilm.encode(["x", "a red ball moves left", "y", "z", "w"])
  np.testing.assert_array_equal(again[1], emb[0])


def test_minilm_is_the_pretrained_model(minilm):
  """Semantics only a trained encoder has: paraphrases are closer than
  unrelated text."""
  a = pooled(minilm, "a dog runs on the beach")
  b = pooled(minilm, "a puppy running along the shore")
  c = pooled(minilm, "quarterly stock market report")
  assert a @ b > a @ c + 0.2


def write_tiny_clip(path):
  import transformers
  chars = list(string.ascii_lowercase)
  vocab = {}
  for tok in chars + [c + "</w>" for c in chars] + [
      "<|startoftext|>", "<|endoftext|>"]:
    vocab[tok] = len(vocab)
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text("#version: 0.2\n")
  tokenizer = transformers.CLIPTokenizer(
      str(path / "vocab.json"), str(path / "merges.txt"))
  tokenizer.save_pretrained(str(path))
  config = transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
      bos_token_id=vocab["<|startoftext|>"],
      eos_token_id=vocab["<|endoftext|>"],
      pad_token_id=vocab["<|endoftext|>"])
  model = transformers.FlaxCLIPTextModel(config, seed=3)
  model.save_pretrained(str(path))
  return model, tokenizer


def test_clip_from_a_local_folder(tmp_path):
  model, tokenizer = write_tiny_clip(tmp_path)
  enc = text.load_text_encoder("clip", str(tmp_path), max_length=12)
  assert enc.dim == 32
  emb, mask = enc.encode(["a cat", "red ball"])
  assert emb.shape == (2, 12, 32)
  tok = tokenizer(["a cat"], padding="max_length", max_length=12,
                  return_tensors="np")
  direct = model(input_ids=tok["input_ids"],
                 attention_mask=tok["attention_mask"]).last_hidden_state[0]
  m = mask[0] > 0
  np.testing.assert_allclose(emb[0][m], np.asarray(direct)[m], atol=1e-5)
  assert not np.allclose(emb[0], emb[1])


def test_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown text encoder"):
    text.load_text_encoder("t5")
  with pytest.raises(ValueError, match="needs a local path"):
    text.load_text_encoder("clip")
  with pytest.raises(FileNotFoundError, match="not found"):
    text.load_text_encoder("clip", str(tmp_path / "missing"))
