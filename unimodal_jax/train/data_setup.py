"""What the training loop reads, by `config.data.kind`:

- 'lm_text' (default): a built-in text corpus, tokenized and packed (data/lm_data.py); reports
  the unigram baseline of its held-out tokens.
- 'documents': the document pipeline (data/pipeline.py) over shard directories and built-in
  worlds, mixed by weight:
      data.sources = {name: {path: DIR, weight: w}                      # shards
                      name: {world: 'digits', task: 'caption', count: N, size: 32, weight: w}}
      data.eval_sources = {...}   (optional, same form; fixed held-out batches)
      data.tokenizer = PATH.model (or "" to train one on the sources' text, cached)
      data.vocab_size, data.image_codes, data.format = {image_size, tokens_per_image,
      max_images, text_dropout}, data.num_workers, data.strict
Either way the loop gets: an iterator with get_state/set_state (saved in checkpoints), fixed
eval batches, the tokenizer's vocabulary size, and optional extra figures for results.json.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils

from unimodal_jax.data import lm_data


@dataclasses.dataclass
class DataSetup:
  train_iter: Any  # next() -> this process's batch (numpy dict); get_state()/set_state()
  eval_batches: list  # this process's parts of fixed held-out batches
  vocab_size: int  # ids the data can contain
  extras: Callable[[], dict]  # figures for results.json (baselines, skip counts)
  eval_note: Callable[[dict], str] = lambda m: ""


def _on_process_0_first(build: Callable[[Callable], Any], log):
  """Run `build(log)` on process 0 (which writes caches), then on the others."""
  result = build(log) if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("data caches written")
  return result if jax.process_index() == 0 else build(lambda *a, **k: None)


def _cache_dir(config, workdir):
  return config.data.get("cache_dir") or os.path.join(workdir, "data")


def _lm_text(config, workdir, log) -> DataSetup:
  data = _on_process_0_first(
      lambda lg: lm_data.build_token_data(config.data, config.seq_len,
                                          _cache_dir(config, workdir), lg), log)
  pi, pc = jax.process_index(), jax.process_count()
  return DataSetup(
      train_iter=lm_data.train_iterator(data.train, config.global_batch,
                                        int(config.train.seed), pi, pc),
      eval_batches=lm_data.eval_batches(data.heldout, config.global_batch,
                                        int(config.train.eval_batches), pi, pc),
      vocab_size=data.vocab_size,
      extras=lambda: {"unigram_heldout_loss": data.unigram_heldout_loss},
      eval_note=lambda m: f" (unigram baseline {data.unigram_heldout_loss:.4f})")


def _sources(spec: dict, where: str):
  from unimodal_jax.data import sources, worlds
  out = []
  for name, s in spec.items():
    s = dict(s)
    weight = float(s.get("weight", 1.0))
    if "path" in s:
      out.append(sources.from_shards(name, s["path"], weight))
    elif "world" in s:
      world, task = s["world"], s.get("task", "caption")
      split, seed = s.get("split", "train"), int(s.get("seed", 0))
      worlds.check(world, task, split, f"{where}.{name}")
      size = int(s.get("size", worlds.DEFAULT_SIZE[world]))
      out.append(sources.from_world(
          name, lambda i, w=world, t=task, sd=seed, z=size, sp=split: worlds.make_document(
              w, t, sd, i, z, sp),
          int(s.get("count", worlds.default_count(world, split)))))
    else:
      raise ValueError(f"{where}.{name}: give 'path' (a shard directory) or 'world' "
                       f"(one of {worlds.WORLDS}, with a task), got {sorted(s)}")
  return out


def _documents(config, workdir, log) -> DataSetup:
  from unimodal_jax.data import formatting, pipeline, text_tokenizer
  from unimodal_jax.data.vocab import Vocab
  d = config.data
  train_sources = _sources(d.sources.to_dict(), "config.data.sources")
  tokenizer_path = d.get("tokenizer") or ""
  if not tokenizer_path:
    tokenizer_path = os.path.join(_cache_dir(config, workdir), f"spm_{int(d.vocab_size)}.model")

    def train_tokenizer(lg):
      if not os.path.exists(tokenizer_path):
        from unimodal_jax.data import documents
        texts = []
        for s in train_sources:
          for i in range(min(len(s.records), 2000)):
            doc = documents.decode(s.records[i])
            texts += [seg.text for seg in doc.segments if seg.type == "text" and seg.text]
        lg(f"data: training a {d.vocab_size}-token sentencepiece model on {len(texts)} texts")
        text_tokenizer.train_sentencepiece(texts, tokenizer_path, int(d.vocab_size))
      return tokenizer_path

    _on_process_0_first(train_tokenizer, log)
  sp = text_tokenizer.load(tokenizer_path)
  vocab = Vocab.from_sentencepiece(sp, image_codes=int(d.get("image_codes", 0)))
  fmt_cfg = formatting.FormatConfig(max_length=config.seq_len, **d.get("format", {}).to_dict()
                                    if d.get("format") else {})
  formatter = formatting.Formatter(sp, vocab, fmt_cfg)
  pi, pc = jax.process_index(), jax.process_count()
  train, counter = pipeline.build(
      train_sources, formatter, global_batch=config.global_batch, seed=int(config.train.seed),
      process_index=pi, process_count=pc, num_workers=int(d.get("num_workers", 0)),
      strict=bool(d.get("strict", False)))
  eval_batches = []
  if d.get("eval_sources"):
    eval_ds, _ = pipeline.build(_sources(d.eval_sources.to_dict(), "config.data.eval_sources"),
                                formatter, global_batch=config.global_batch, seed=12345,
                                process_index=pi, process_count=pc)
    it = iter(eval_ds)
    eval_batches = [next(it) for _ in range(int(config.train.eval_batches))]
  return DataSetup(train_iter=iter(train), eval_batches=eval_batches, vocab_size=vocab.size,
                   extras=lambda: {"data_skips": counter.summary()})


def build(config, workdir: str, log) -> DataSetup:
  kind = config.data.get("kind", "lm_text")
  if kind == "lm_text":
    return _lm_text(config, workdir, log)
  if kind == "documents":
    return _documents(config, workdir, log)
  raise ValueError(f"config.data.kind={kind!r}; expected 'lm_text' or 'documents'")
