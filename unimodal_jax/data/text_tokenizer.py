"""Train and load sentencepiece text tokenizers."""
from __future__ import annotations

import io
import os

import sentencepiece as spm


def train_sentencepiece(texts, out_path: str, vocab_size: int, model_type: str = "unigram",
                        seed_sentences: int = 200_000) -> str:
  """Train on `texts` (an iterable of strings) and write the model to `out_path` (.model).

  Deterministic for the same texts and settings (single-threaded, no sentence sampling).
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(t.replace("\n", " ") for t in texts), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, character_coverage=1.0, byte_fallback=True,
      input_sentence_size=seed_sentences, shuffle_input_sentence=False, num_threads=1,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp = out_path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, out_path)
  return out_path


def load(path: str) -> spm.SentencePieceProcessor:
  if not os.path.exists(path):
    raise FileNotFoundError(f"sentencepiece model {path} not found")
  return spm.SentencePieceProcessor(model_file=path)
