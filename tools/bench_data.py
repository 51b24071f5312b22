"""Benchmark the document pipeline on this machine against what a train step consumes.

    python tools/bench_data.py [--image_size 256] [--seq_len 1024] [--batch 8] [--workers 0,2]

Writes a realistic mix to temporary shards (JPEG photos-like images of 384x320 decoded and
resized to --image_size, captions, conversations, and text-to-image documents with 256
pre-computed image codes), then times the pipeline (decode + resize, tokenize, format, pack,
batch) serially and with grain worker processes, and a tiny model's train step on rows of the
same length. Prints a table and, last, a JSON line: examples/s, batches/s and tokens/s per worker
setting, the train step's tokens/s, and the ratio data/consume (above 1: no step waits on data).
Each figure is the median of --repeats timed runs.
"""
import argparse
import io
import json
import os
import sys
import tempfile
import time

# The repository root: experiment configs import experiments.*, which is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _make_dataset(directory, n, seed):
  import numpy as np
  from PIL import Image
  from unimodal_jax.data import documents as D, shards
  rng = np.random.default_rng(seed)
  docs = []
  words = "a the red blue small large dog cat box sky tree on in with near under".split()
  for i in range(n):
    small = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((384, 320), Image.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    text = " ".join(rng.choice(words, rng.integers(8, 30)))
    kind = i % 4
    if kind in (0, 1):
      docs.append(D.Document(f"c{i}", "caption", [D.Segment.of_image(buf.getvalue()),
                                                   D.Segment.of_text(text)]))
    elif kind == 2:
      docs.append(D.Document(f"v{i}", "conversation", [
          D.Segment.of_image(buf.getvalue(), "user"), D.Segment.of_text("what is here?", "user"),
          D.Segment.of_text(text, "assistant")]))
    else:
      docs.append(D.Document(f"t{i}", "text_to_image", [
          D.Segment.of_text(text), D.Segment.of_image_tokens(rng.integers(0, 16384, 256))]))
  shards.write_shard(shards.shard_path(directory, "bench", 0, 1), docs)
  return docs


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--image_size", type=int, default=256, help="pixels of images the model reads")
  p.add_argument("--tokens_per_image", type=int, default=256, help="patch slots per image read")
  p.add_argument("--seq_len", type=int, default=1024, help="packed row length")
  p.add_argument("--batch", type=int, default=8, help="rows per batch")
  p.add_argument("--batches", type=int, default=12, help="batches timed per run")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
  p.add_argument("--workers", default="0,2", help="comma-separated grain worker counts to time")
  p.add_argument("--documents", type=int, default=400, help="documents in the benchmark shard")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import numpy as np
  from unimodal_jax.data import formatting, lm_data, pipeline, sources, text_tokenizer
  from unimodal_jax.data.vocab import Vocab

  tmp = tempfile.mkdtemp(prefix="bench_data_")
  docs = _make_dataset(tmp, args.documents, 0)
  spm_path = os.path.join(tmp, "spm.model")
  text_tokenizer.train_sentencepiece(lm_data.CORPORA["stdlib_docstrings"]()[:2000], spm_path, 2048)
  sp = text_tokenizer.load(spm_path)
  vocab = Vocab.from_sentencepiece(sp, image_codes=16384)
  fmt = formatting.Formatter(sp, vocab, formatting.FormatConfig(
      max_length=args.seq_len, image_size=args.image_size, tokens_per_image=args.tokens_per_image,
      max_images=4))
  source = sources.from_shards("bench", tmp)

  # The step is timed first, while no grain worker process competes for the cores.
  consume = _train_step_tokens_per_s(args.seq_len, args.batch, args.repeats)
  results = {}
  for workers in [int(w) for w in args.workers.split(",")]:
    runs = []
    for r in range(args.repeats):
      ds, counter = pipeline.build([source], fmt, global_batch=args.batch, seed=r,
                                   num_workers=workers)
      it = iter(ds)
      next(it)  # start-up (worker processes, first fill) is not throughput
      start = time.perf_counter()
      tokens = 0
      for _ in range(args.batches):
        b = next(it)
        tokens += int((b["segment_ids"] > 0).sum())
      elapsed = time.perf_counter() - start
      kept = counter.summary()["kept"]
      runs.append((args.batches / elapsed, tokens / elapsed, kept))
      getattr(it, "close", lambda: None)()  # stop worker processes before the next timing
    batches_per_s = float(np.median([r[0] for r in runs]))
    results[f"workers_{workers}"] = {
        "batches_per_s": batches_per_s,
        "tokens_per_s": float(np.median([r[1] for r in runs])),
        "examples_per_s": batches_per_s * args.batch * float(np.mean(
            [r[2] for r in runs])) / (args.batches + 1) / args.batch,
    }
    print(f"workers={workers}: {batches_per_s:.2f} batches/s, "
          f"{results[f'workers_{workers}']['tokens_per_s']:,.0f} tokens/s", flush=True)

  best = max(v["tokens_per_s"] for v in results.values())
  summary = {"image_size": args.image_size, "seq_len": args.seq_len, "batch": args.batch,
             **results, "train_step_tokens_per_s": consume, "data_over_consume": best / consume}
  print(f"tiny train step consumes {consume:,.0f} tokens/s; best pipeline / step = "
        f"{best / consume:.2f}")
  print(json.dumps(summary))
  return 0


def _train_step_tokens_per_s(seq_len, batch, repeats):
  """Tokens/s of experiments/tiny/lm.py's train step at this row length (what it consumes)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from experiments.tiny import lm
  from unimodal_jax import sharding
  from unimodal_jax.models.decoder import Decoder
  from unimodal_jax.models.decoder_config import DecoderConfig
  from unimodal_jax.train import optimizer
  from unimodal_jax.train.state import init_state, state_shardings
  from unimodal_jax.train.step import make_train_step
  config = lm.get_config()
  model_config = DecoderConfig.from_dict({**config.model.to_dict(), "max_seq_len": seq_len})
  model = Decoder(model_config)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  params = nn.meta.unbox(sharding.abstract_params(model, model_config))
  tx, schedules = optimizer.build(config.optimizer.to_dict(), params, 100)
  abstract, shardings = state_shardings(model, model_config, tx, mesh)
  state = init_state(model, model_config, tx, 0, shardings)
  frozen = jax.tree.map(lambda _: False, state.params)
  step = jax.jit(make_train_step(model, tx, frozen, schedules), donate_argnums=(0,))
  tokens = jnp.ones((batch, seq_len), jnp.int32)
  b = {"inputs": tokens, "targets": tokens, "target_mask": jnp.ones((batch, seq_len))}
  state, _ = step(state, b)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  return batch * seq_len / float(np.median(times))


if __name__ == "__main__":
  sys.exit(main())
