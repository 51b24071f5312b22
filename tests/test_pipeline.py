"""The document pipeline: task formatting and masks, packing, resume, process sharding,
mixing, and the skip/strict policy."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from unimodal_jax.data import documents as D
from unimodal_jax.data import formatting, pipeline, sources, text_tokenizer
from unimodal_jax.data.vocab import Vocab

CFG = formatting.FormatConfig(max_length=96, image_size=16, tokens_per_image=4, max_images=3,
                              text_dropout=0.0)


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  texts = [f"a {c} box number {i} what is it yes no draw show the picture"
           for i in range(200) for c in ("red", "green", "blue")]
  path = str(tmp_path_factory.mktemp("spm") / "spm.model")
  text_tokenizer.train_sentencepiece(texts, path, vocab_size=300)
  return text_tokenizer.load(path)


@pytest.fixture(scope="module")
def vocab(sp):
  return Vocab.from_sentencepiece(sp, image_codes=32)


def _png(value, w=20, h=24):
  out = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(out, "PNG")
  return out.getvalue()


def _decode(sp, vocab, ids, mask, keep):
  """Readable (piece, is_target) pairs."""
  out = []
  for t, m in zip(ids, mask):
    t = int(t)
    name = sp.id_to_piece(t) if t < vocab.text_size else (
        ["<is>", "<ie>", "<p>", "<sep>"][t - vocab.text_size] if t < vocab.image_offset
        else f"c{t - vocab.image_offset}")
    if keep(m):
      out.append(name)
  return out


def test_caption_targets_only_the_caption(sp, vocab):
  doc = D.Document("d", "caption", [D.Segment.of_image(_png(10)), D.Segment.of_text("a red box")])
  ex = formatting.Formatter(sp, vocab, CFG)(doc)
  full = np.concatenate([ex["inputs"][:1], ex["targets"]])
  assert full[0] == vocab.bos_id and full[-1] == vocab.eos_id
  assert list(full[1:7]) == [vocab.image_start] + [vocab.image_patch] * 4 + [vocab.image_end]
  targets = ex["targets"][ex["target_mask"] == 1]
  assert list(targets) == sp.encode("a red box") + [vocab.eos_id]
  assert ex["images"].shape == (1, 16, 16, 3) and ex["images"][0, 0, 0, 0] == 10
  assert (ex["target_modality"] == formatting.TEXT).all()
  np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])  # shifted by one


def test_text_to_image_targets_the_codes_as_image_modality(sp, vocab):
  doc = D.Document("d", "text_to_image", [D.Segment.of_text("draw a blue box"),
                                           D.Segment.of_image_tokens([5, 0, 31, 7])])
  ex = formatting.Formatter(sp, vocab, CFG)(doc)
  target = ex["targets"][ex["target_mask"] == 1]
  codes = [vocab.image_token(c) for c in (5, 0, 31, 7)]
  assert list(target) == [vocab.image_start, *codes, vocab.image_end, vocab.eos_id]
  modality = ex["target_modality"][ex["target_mask"] == 1]
  assert list(modality) == [1] * 6 + [0]
  assert ex["images"].shape[0] == 0  # nothing to read
  bad = D.Document("d", "text_to_image", [D.Segment.of_text("x"),
                                           D.Segment.of_image_tokens([99])])
  with pytest.raises(formatting.Skip, match="outside"):
    formatting.Formatter(sp, vocab, CFG)(bad)
  no_tokens = D.Document("d", "text_to_image", [D.Segment.of_text("x"),
                                                 D.Segment.of_image(_png(1))])
  with pytest.raises(formatting.Skip, match="no image tokenizer"):
    formatting.Formatter(sp, vocab, CFG)(no_tokens)
  # with an image tokenizer, raw images become codes
  tokenizer = lambda pixels: np.array([pixels[0, 0, 0] % 32, 3])
  ex = formatting.Formatter(sp, vocab, CFG, image_tokenizer=tokenizer)(no_tokens)
  assert list(ex["targets"][ex["target_mask"] == 1][:3]) == [
      vocab.image_start, vocab.image_token(1), vocab.image_token(3)]


def test_text_dropout_for_classifier_free_guidance(sp, vocab):
  doc = D.Document("d", "text_to_image", [D.Segment.of_text("draw a blue box"),
                                           D.Segment.of_image_tokens([1, 2])])
  fmt = formatting.Formatter(sp, vocab, formatting.FormatConfig(**{**CFG.__dict__,
                                                                  "text_dropout": 0.1}))
  rng = np.random.default_rng(0)
  lengths = [len(fmt(doc, rng)["inputs"]) for _ in range(2000)]
  dropped = np.mean(np.asarray(lengths) == min(lengths))
  assert 0.08 < dropped < 0.12
  assert min(lengths) == 1 + 4  # BOS, start, 2 codes: the prompt is gone, the image stays


def test_edit_instruction_dropout_keeps_the_image(sp, vocab):
  """Editing's CFG branch: the instruction is dropped with p=text_dropout, the user's image and
  the target image stay."""
  doc = D.Document("e", "edit", [
      D.Segment.of_image(_png(3), "user"), D.Segment.of_text("make it blue", "user"),
      D.Segment.of_image_tokens([4, 5], "assistant")])
  fmt = formatting.Formatter(sp, vocab, formatting.FormatConfig(**{**CFG.__dict__,
                                                                  "text_dropout": 0.2}))
  rng = np.random.default_rng(1)
  examples = [fmt(doc, rng) for _ in range(1000)]
  lengths = np.asarray([len(e["inputs"]) for e in examples])
  short = lengths == lengths.min()
  assert 0.16 < short.mean() < 0.24
  assert lengths.max() - lengths.min() == len(sp.encode("make it blue"))
  dropped = examples[int(np.argmax(short))]
  assert len(dropped["images"]) == 1
  assert list(dropped["targets"][dropped["target_mask"] == 1])[:3] == [
      vocab.image_start, vocab.image_token(4), vocab.image_token(5)]


def test_conversation_and_edit_target_only_assistant_turns(sp, vocab):
  doc = D.Document("d", "conversation", [
      D.Segment.of_image(_png(3), "user"), D.Segment.of_text("what is it", "user"),
      D.Segment.of_text("a red box", "assistant"), D.Segment.of_text("sure", "user"),
      D.Segment.of_text("yes", "assistant")])
  ex = formatting.Formatter(sp, vocab, CFG)(doc)
  targets = list(ex["targets"][ex["target_mask"] == 1])
  assert targets == sp.encode("a red box") + [vocab.eos_id] + sp.encode("yes") + [vocab.eos_id]
  edit = D.Document("e", "edit", [
      D.Segment.of_image(_png(3), "user"), D.Segment.of_text("make it blue", "user"),
      D.Segment.of_image_tokens([4, 4, 9], "assistant")])
  ex = formatting.Formatter(sp, vocab, CFG)(edit)
  targets = list(ex["targets"][ex["target_mask"] == 1])
  assert targets == [vocab.image_start] + [vocab.image_token(c) for c in (4, 4, 9)] + [
      vocab.image_end, vocab.eos_id]
  assert ex["images"].shape[0] == 1  # the source image is read


def test_interleaved_image_tokens_are_written_then_the_image_read(sp, vocab):
  """ILLUME's layout of a picture placed in a document: <image_start> codes <image_end> as image
  targets, then the picture read (never a target); placed_image builds the same block."""
  codes = [5, 0, 31, 7]
  doc = D.Document("d", "interleaved", [D.Segment.of_text("a red box"),
                                         D.Segment.of_image_tokens(codes),
                                         D.Segment.of_image(_png(1)), D.Segment.of_text("yes")])
  formatter = formatting.Formatter(sp, vocab, CFG)
  ex = formatter(doc)
  tokens = [vocab.bos_id] + list(ex["targets"])
  text = sp.encode("a red box")
  block = ([vocab.image_start] + [vocab.image_token(c) for c in codes] + [vocab.image_end]
           + [vocab.image_start] + [vocab.image_patch] * 4 + [vocab.image_end])
  assert tokens == [vocab.bos_id] + text + block + sp.encode("yes") + [vocab.eos_id]
  mask, modality = ex["target_mask"], ex["target_modality"]
  written = slice(len(text), len(text) + 6)  # targets are shifted by one
  assert mask[written].all() and (modality[written] == formatting.IMAGE).all()
  assert not mask[len(text) + 6:len(text) + 12].any()  # the read block
  assert ex["images"].shape[0] == 1
  placed, views = formatter.placed_image(_png(1), codes)
  assert placed == block and np.array_equal(views[0], ex["images"][0])


def test_interleaved_reads_images_and_learns_text(sp, vocab):
  doc = D.Document("d", "interleaved", [D.Segment.of_text("a red box"),
                                         D.Segment.of_image(_png(1)), D.Segment.of_text("yes"),
                                         D.Segment.of_image(_png(2))])
  ex = formatting.Formatter(sp, vocab, CFG)(doc)
  assert ex["images"].shape[0] == 2
  targets = list(ex["targets"][ex["target_mask"] == 1])
  assert targets == sp.encode("a red box")[1:] + sp.encode("yes") + [vocab.eos_id] or \
      targets == sp.encode("a red box") + sp.encode("yes") + [vocab.eos_id]
  assert vocab.image_patch not in targets


def _docs(n, prefix="c", task="caption"):
  out = []
  for i in range(n):
    if task == "caption":
      segs = [D.Segment.of_image(_png(i % 250)), D.Segment.of_text(f"box number {i}")]
    else:
      segs = [D.Segment.of_text(f"draw number {i}"), D.Segment.of_image_tokens([i % 32] * 3)]
    out.append(D.Document(f"{prefix}{i}", task, segs))
  return out


def _records(docs):
  return [D.encode(d) for d in docs]


def test_packing_keeps_documents_whole_and_aligned(sp, vocab):
  docs = _docs(30) + _docs(30, "t", "text_to_image")
  fmt = formatting.Formatter(sp, vocab, CFG)
  expected = {}
  for d in docs:
    ex = fmt(d)
    expected[tuple(ex["inputs"])] = ex
  ds, _ = pipeline.build([pipeline.Source("s", _records(docs))], fmt, global_batch=4, seed=1)
  it = iter(ds)
  seen = 0
  for _ in range(6):
    batch = next(it)
    for r in range(4):
      seg = batch["segment_ids"][r]
      assert (batch["target_mask"][r][seg == 0] == 0).all()  # padding is never a target
      image_ids = batch["image_segment_ids"][r]
      for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        assert (np.diff(idx) == 1).all()  # contiguous
        np.testing.assert_array_equal(batch["positions"][r][idx], np.arange(len(idx)))
        ex = expected[tuple(batch["inputs"][r][idx])]  # exactly one whole example
        for k in ("targets", "target_mask", "target_modality"):
          np.testing.assert_array_equal(batch[k][r][idx], ex[k])
        np.testing.assert_array_equal(batch["images"][r][image_ids == s], ex["images"])
        seen += 1
  assert seen > 24


def test_resume_gives_the_identical_next_batches(sp, vocab):
  recs = _records(_docs(40) + _docs(40, "t", "text_to_image"))
  fmt = formatting.Formatter(sp, vocab, formatting.FormatConfig(**{**CFG.__dict__,
                                                                  "text_dropout": 0.3}))
  build = lambda: pipeline.build([pipeline.Source("a", recs[:40], 2.0),
                                  pipeline.Source("b", recs[40:], 1.0)], fmt,
                                 global_batch=4, seed=3)[0]
  it = iter(build())
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # it goes through the checkpoint as JSON
  expected = [next(it) for _ in range(5)]
  resumed = iter(build())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_processes_read_disjoint_data_covering_the_epoch():
  n = 50
  source = pipeline.Source("s", [f"r{i}".encode() for i in range(n)])
  take = lambda item, rng: item[1].decode()
  per_process = []
  for p in range(2):
    ds = pipeline.source_examples(source, take, seed=5, process_index=p, process_count=2)
    per_process.append([ds[i] for i in range(n // 2)])
  a, b = set(per_process[0]), set(per_process[1])
  assert not a & b
  assert a | b == {f"r{i}" for i in range(n)}


def test_mixing_follows_the_weights(sp, vocab):
  fmt = formatting.Formatter(sp, vocab, CFG)
  ds, _ = pipeline.build([pipeline.Source("captions", _records(_docs(50)), 3.0),
                          pipeline.Source("t2i", _records(_docs(50, "t", "text_to_image")), 1.0)],
                         fmt, global_batch=8, seed=0)
  it = iter(ds)
  captions = generations = 0
  for _ in range(30):
    b = next(it)
    for r in range(8):
      for s in np.unique(b["segment_ids"][r][b["segment_ids"][r] > 0]):
        is_gen = (b["target_modality"][r][b["segment_ids"][r] == s] == 1).any()
        generations += is_gen
        captions += not is_gen
  assert 0.68 < captions / (captions + generations) < 0.82


def test_bad_records_are_counted_or_fail_by_name(sp, vocab):
  docs = _docs(20)
  recs = _records(docs)
  recs[3] = D.encode(D.Document("broken", "caption", [D.Segment.of_image(b"not an image"),
                                                      D.Segment.of_text("x")]))
  recs[5] = b"\x00garbage"
  recs[7] = D.encode(D.Document("long", "caption", [D.Segment.of_image(_png(1)),
                                                    D.Segment.of_text("box " * 200)]))
  fmt = formatting.Formatter(sp, vocab, CFG)
  ds, counter = pipeline.build([pipeline.Source("src", recs)], fmt, global_batch=2, seed=0)
  it = iter(ds)
  for _ in range(40):
    next(it)
  summary = counter.summary()
  assert summary["undecodable image"] >= 1 and summary["too long"] >= 1
  assert summary["not a msgpack document"] >= 1
  strict, _ = pipeline.build([pipeline.Source("src", recs)], fmt, global_batch=2, seed=0,
                             strict=True)
  with pytest.raises(formatting.Skip, match=r"src:[357]: "):
    it = iter(strict)
    for _ in range(40):
      next(it)


def test_world_sources_and_worker_processes(sp, vocab):
  from unimodal_jax.data.worlds import digits
  world = sources.from_world("digits", lambda i: digits.document(i, size=16), 100)
  fmt = formatting.Formatter(sp, vocab, CFG)
  serial, _ = pipeline.build([world], fmt, global_batch=4, seed=2)
  parallel, _ = pipeline.build([world], fmt, global_batch=4, seed=2, num_workers=2)
  a, b = iter(serial), iter(parallel)
  for _ in range(3):
    x, y = next(a), next(b)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_world_shards_tool_writes_what_the_world_generates(tmp_path, repo_root):
  import subprocess
  import sys
  from unimodal_jax.data import shards
  from unimodal_jax.data.worlds import shapes
  out = tmp_path / "vqa"
  proc = subprocess.run([sys.executable, "tools/write_world_shards.py", "--world=shapes",
                         "--task=conversation", "--count=25", f"--out_dir={out}",
                         "--name=vqa", "--records_per_shard=10"], capture_output=True, text=True,
                        cwd=repo_root)
  assert proc.returncode == 0, proc.stderr
  assert len(shards.shard_files(str(out))) == 3
  docs = list(shards.read_documents(str(out)))
  assert [D.encode(d) for d in docs] == [D.encode(shapes.make_document(0, i, "conversation"))
                                         for i in range(25)]
  bad = subprocess.run([sys.executable, "tools/write_world_shards.py", "--world=digits",
                        "--task=edit", "--count=2", f"--out_dir={tmp_path / 'x'}", "--name=x"],
                       capture_output=True, text=True, cwd=repo_root)
  assert bad.returncode == 2 and "task 'edit'" in bad.stderr
