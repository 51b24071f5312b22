"""Language-model data for the tiny experiments: a corpus tokenized, packed into fixed-length
rows, split into train and held-out, and streamed by grain with a checkpointable iterator.

Rows are contiguous windows of the token stream (documents joined by EOS), length seq_len + 1:
inputs are row[:-1], targets row[1:]. Held-out rows come from whole documents never trained on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import grain
import numpy as np

from unimodal_jax.data import stdlib_text, text_tokenizer

CORPORA = {"stdlib_docstrings": stdlib_text.docstrings}


@dataclasses.dataclass
class TokenData:
  train: np.ndarray  # int32 [rows, seq_len + 1]
  heldout: np.ndarray  # int32 [rows, seq_len + 1]
  tokenizer_path: str
  vocab_size: int
  unigram_heldout_loss: float  # nats/token of train-set unigram frequencies on held-out tokens


def _is_heldout(doc: str, fraction: float) -> bool:
  digest = hashlib.sha256(doc.encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def _pack(token_lists, seq_len: int) -> np.ndarray:
  stream = np.concatenate([np.asarray(t, np.int32) for t in token_lists])
  rows = len(stream) // (seq_len + 1)
  return stream[:rows * (seq_len + 1)].reshape(rows, seq_len + 1)


def unigram_loss(train: np.ndarray, heldout: np.ndarray, vocab_size: int) -> float:
  """Cross entropy (nats/token) of held-out targets under add-one-smoothed train frequencies."""
  counts = np.bincount(train[:, 1:].ravel(), minlength=vocab_size).astype(np.float64) + 1.0
  logp = np.log(counts / counts.sum())
  return float(-logp[heldout[:, 1:].ravel()].mean())


def build_token_data(data_config, seq_len: int, cache_dir: str, log=print) -> TokenData:
  """Tokenizer + packed token arrays for `data_config` (corpus, vocab_size, heldout_fraction)
  and rows of seq_len + 1 tokens, cached under `cache_dir` so a resumed run reuses them."""
  corpus = data_config.corpus
  if corpus not in CORPORA:
    raise ValueError(f"data.corpus={corpus!r}; available: {sorted(CORPORA)}")
  key = json.dumps({"corpus": corpus, "vocab_size": data_config.vocab_size, "seq_len": seq_len,
                    "heldout_fraction": data_config.heldout_fraction}, sort_keys=True)
  tag = hashlib.sha256(key.encode()).hexdigest()[:12]
  tok_path = os.path.join(cache_dir, f"spm_{tag}.model")
  arrays_path = os.path.join(cache_dir, f"tokens_{tag}.npz")
  if os.path.exists(tok_path) and os.path.exists(arrays_path):
    with np.load(arrays_path) as z:
      train, heldout = z["train"], z["heldout"]
  else:
    start = time.time()
    docs = CORPORA[corpus]()
    train_docs = [d for d in docs if not _is_heldout(d, data_config.heldout_fraction)]
    heldout_docs = [d for d in docs if _is_heldout(d, data_config.heldout_fraction)]
    log(f"data: {len(docs)} documents from {corpus} ({len(heldout_docs)} held out); training a "
        f"{data_config.vocab_size}-token sentencepiece model")
    text_tokenizer.train_sentencepiece(train_docs, tok_path, data_config.vocab_size)
    sp = text_tokenizer.load(tok_path)
    eos = sp.eos_id()
    encode = lambda ds: [ids + [eos] for ids in sp.encode(ds)]
    train = _pack(encode(train_docs), seq_len)
    heldout = _pack(encode(heldout_docs), seq_len)
    tmp = arrays_path + ".tmp.npz"
    np.savez(tmp, train=train, heldout=heldout)
    os.replace(tmp, arrays_path)
    log(f"data: {train.shape[0]} train rows, {heldout.shape[0]} held-out rows of "
        f"{seq_len + 1} tokens in {time.time() - start:.1f}s")
  vocab = text_tokenizer.load(tok_path).get_piece_size()
  return TokenData(train, heldout, tok_path, vocab, unigram_loss(train, heldout, vocab))


def to_batch(rows: np.ndarray) -> dict:
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:],
          "target_mask": np.ones(rows[:, 1:].shape, np.float32)}


def train_iterator(rows: np.ndarray, global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1):
  """Endless shuffled batches of this process's share of each global batch.

  Every process walks the same global shuffled order and takes every process_count-th row, so
  the global batch (all processes' rows) is the same set of rows whatever the process count.
  The iterator has grain's get_state()/set_state() for checkpoints.
  """
  if global_batch % process_count:
    raise ValueError(f"global_batch={global_batch} not divisible by {process_count} processes")
  ds = (grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
        [process_index::process_count]
        .batch(global_batch // process_count, drop_remainder=True).map(to_batch))
  return iter(ds)


def eval_batches(rows: np.ndarray, global_batch: int, max_batches: int, process_index: int = 0,
                 process_count: int = 1) -> list[dict]:
  """Fixed held-out batches (this process's rows of each), in order."""
  n = min(max_batches, len(rows) // global_batch)
  if n == 0:
    raise ValueError(f"held-out set has {len(rows)} rows, fewer than one batch of {global_batch}")
  local = global_batch // process_count
  return [to_batch(rows[b * global_batch:(b + 1) * global_batch][process_index::process_count]
                   [:local]) for b in range(n)]
