"""The format converters and tools/write_shards.py, on small inputs written here.

Each converter's output is read back with shards.read_documents and compared exactly (ids,
segment order, roles, texts, image bytes equal to the source files); each kind of bad input must
appear in dataset_info.json's skipped list under the right file and key, and stop a strict run
with an error naming them.
"""
import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from unimodal_jax.data import converters, shards
from unimodal_jax.data.converters import common, tfds_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encoded(fmt: str, color, size=(8, 6)) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, color).save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
  return out.getvalue()


def noisy_jpeg(seed: int) -> bytes:
  pixels = random.Random(seed).randbytes(32 * 32 * 3)
  out = io.BytesIO()
  Image.frombytes("RGB", (32, 32), pixels).save(out, format="JPEG")
  return out.getvalue()


RED_JPEG = encoded("JPEG", (255, 0, 0))
GREEN_PNG = encoded("PNG", (0, 255, 0))
BLUE_WEBP = encoded("WEBP", (0, 0, 255))
GARBAGE_JPG = random.Random(1).randbytes(300)  # random bytes under a .jpg name
TRUNCATED_JPEG = noisy_jpeg(2)[:-200]


def write_files(directory, files: dict) -> None:
  for name, data in files.items():
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def segments(doc):
  return [(s.type, s.role, s.text if s.type == "text" else s.image) for s in doc.segments]


def read_back(out_dir):
  docs = list(shards.read_documents(str(out_dir)))
  with open(out_dir / shards.INFO_FILE) as f:
    info = json.load(f)
  return docs, info


def skips(info):
  return [(s["source"], s["key"], s["reason"], s["dropped"]) for s in info["skipped"]]


def test_checked_image_keeps_png_and_jpeg_reencodes_others_and_rejects_broken():
  assert common.checked_image(RED_JPEG) == RED_JPEG
  assert common.checked_image(GREEN_PNG) == GREEN_PNG
  converted = common.checked_image(BLUE_WEBP)
  assert converted.startswith(b"\x89PNG")
  assert np.array_equal(np.asarray(Image.open(io.BytesIO(converted))),
                        np.asarray(Image.open(io.BytesIO(BLUE_WEBP))))
  for broken in (GARBAGE_JPG, TRUNCATED_JPEG, b""):
    with pytest.raises(common.BadRecord) as e:
      common.checked_image(broken)
    assert e.value.reason == common.CORRUPT_IMAGE


# --- llava ----------------------------------------------------------------------------------------

def llava_inputs(tmp_path):
  write_files(tmp_path / "images", {"coco/a.jpg": RED_JPEG, "b.png": GREEN_PNG,
                                    "garbage.jpg": GARBAGE_JPG, "cut.jpg": TRUNCATED_JPEG})
  def human(value): return {"from": "human", "value": value}
  def gpt(value): return {"from": "gpt", "value": value}
  records = [
      {"id": "r1", "image": "coco/a.jpg", "source_set": "coco",
       "conversations": [human("<image>\nWhat is this?"), gpt("A red square.")]},
      {"id": "r2", "image": "b.png",  # no placeholder: the image goes before the first human text
       "conversations": [human("Describe it."), gpt("Green."), human("Sure?"), gpt("Yes.")]},
      {"id": "r3", "conversations": [human("Hi"), gpt("Hello!")]},  # text only
      {"id": "r4", "image": "nope.jpg", "conversations": [human("<image>\nWhat?"), gpt("?")]},
      {"id": "r5", "image": "garbage.jpg", "conversations": [human("<image>\nWhat?"), gpt("?")]},
      {"id": "r6", "image": "cut.jpg", "conversations": [human("<image>\nWhat?"), gpt("?")]},
      {"id": "r7", "conversations": [human("Hi"), {"from": "bot", "value": "?"}]},
      {"id": "r8", "conversations": [human("Hi"), gpt("   ")]},
      {"id": "r9", "image": "b.png",
       "conversations": [human("Look:\n<image>\nWhich color?"), gpt("Green.")]},
      {"id": "r10", "conversations": [human("<image>\nWhat?"), gpt("?")]},  # placeholder, no image
  ]
  good = tmp_path / "llava.json"
  good.write_text(json.dumps(records))
  bad = tmp_path / "broken.json"
  bad.write_text('[{"id": "x", "conversations": [')
  lines = tmp_path / "more.jsonl"
  lines.write_text(json.dumps({"conversations": [human("Q?"), gpt("A.")]}) + "\n{oops\n")
  return str(good), str(bad), str(lines)


def test_llava(tmp_path):
  good, bad, lines = llava_inputs(tmp_path)
  out = tmp_path / "out"
  summary = converters.write_dataset("llava", [good, bad, lines], str(out), "llava",
                                     converters.Options(image_dir=str(tmp_path / "images")))
  docs, info = read_back(out)
  assert [d.id for d in docs] == ["r1", "r2", "r3", "r9", "more/1"]
  assert {d.task for d in docs} == {"conversation"}
  assert segments(docs[0]) == [("image", "user", RED_JPEG), ("text", "user", "What is this?"),
                               ("text", "assistant", "A red square.")]
  assert segments(docs[1]) == [("image", "user", GREEN_PNG), ("text", "user", "Describe it."),
                               ("text", "assistant", "Green."), ("text", "user", "Sure?"),
                               ("text", "assistant", "Yes.")]
  assert segments(docs[2]) == [("text", "user", "Hi"), ("text", "assistant", "Hello!")]
  assert segments(docs[3]) == [("text", "user", "Look:"), ("image", "user", GREEN_PNG),
                               ("text", "user", "Which color?"), ("text", "assistant", "Green.")]
  assert segments(docs[4]) == [("text", "user", "Q?"), ("text", "assistant", "A.")]
  assert docs[0].metadata == {"source": "llava.json", "images": ["coco/a.jpg"], "source_set": "coco"}
  assert skips(info) == [
      (good, "r4", "missing image", "record"), (good, "r5", "corrupt image", "record"),
      (good, "r6", "corrupt image", "record"), (good, "r7", "malformed turn", "record"),
      (good, "r8", "malformed turn", "record"), (good, "r10", "malformed record", "record"),
      (bad, "", "bad json", "record"), (lines, "line 2", "bad json", "record")]
  assert info["num_records"] == summary.num_records == 5
  assert "skipped 8 records (bad json: 2, corrupt image: 2, malformed record: 1, malformed turn: 2, " \
         "missing image: 1)" in summary.line()

  with pytest.raises(converters.ConversionError, match=re.escape(f"{good}: r4: missing image")):
    converters.write_dataset("llava", [good], str(tmp_path / "strict"), "llava",
                             converters.Options(image_dir=str(tmp_path / "images")), strict=True)
  assert not os.path.exists(tmp_path / "strict" / shards.INFO_FILE)


# --- webdataset -----------------------------------------------------------------------------------

def make_tar(path, members: list[tuple[str, bytes]]) -> bytes:
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path.read_bytes()


def webdataset_inputs(tmp_path):
  complete = tmp_path / "part-000.tar"
  make_tar(complete, [
      ("000.jpg", RED_JPEG), ("000.txt", b"a red square\n"),
      ("001.png", GREEN_PNG), ("001.json", json.dumps({"caption": "green", "url": "http://x/1"}).encode()),
      ("002.jpg", GARBAGE_JPG), ("002.txt", b"corrupt"),
      ("003.jpg", RED_JPEG),                           # image without caption
      ("004.txt", b"caption without image"),
      ("005.webp", BLUE_WEBP), ("005.json", b'{"text": "blue", "width": 8}'),
      ("006.jpg", TRUNCATED_JPEG), ("006.txt", b"truncated image"),
  ])
  cut = tmp_path / "part-001.tar"
  whole = make_tar(cut, [("100.jpg", RED_JPEG), ("100.txt", b"first"),
                         ("101.png", GREEN_PNG), ("101.txt", b"second"),
                         ("102.jpg", noisy_jpeg(3)), ("102.txt", b"lost")])
  offset = whole.index(noisy_jpeg(3))
  cut.write_bytes(whole[:offset + 100])  # cut inside 102.jpg's data
  return str(complete), str(cut)


def test_webdataset(tmp_path):
  complete, cut = webdataset_inputs(tmp_path)
  out = tmp_path / "out"
  converters.write_dataset("webdataset", [complete, cut], str(out), "wds", records_per_shard=2)
  docs, info = read_back(out)
  assert [d.id for d in docs] == ["part-000/000", "part-000/001", "part-000/005", "part-001/100",
                                  "part-001/101"]
  assert {d.task for d in docs} == {"caption"}
  assert segments(docs[0]) == [("image", "", RED_JPEG), ("text", "", "a red square")]
  assert segments(docs[1]) == [("image", "", GREEN_PNG), ("text", "", "green")]
  assert segments(docs[3]) == [("image", "", RED_JPEG), ("text", "", "first")]
  assert segments(docs[4]) == [("image", "", GREEN_PNG), ("text", "", "second")]
  webp_as_png = docs[2].images()[0]
  assert webp_as_png.startswith(b"\x89PNG") and docs[2].segments[1].text == "blue"
  assert docs[1].metadata == {"key": "001", "tar": "part-000.tar", "url": "http://x/1"}
  assert docs[2].metadata == {"key": "005", "tar": "part-000.tar", "width": 8}
  assert skips(info) == [
      (complete, "002", "corrupt image", "record"), (complete, "003", "missing caption", "record"),
      (complete, "004", "missing image", "record"), (complete, "006", "corrupt image", "record"),
      (cut, "102", "truncated tar", "record")]
  assert [s["num_records"] for s in info["shards"]] == [2, 2, 1]
  assert info["shards"][0]["file"] == "wds-00000-of-00003.array_record"

  with pytest.raises(converters.ConversionError, match=re.escape(f"{cut}: 102: truncated tar")):
    converters.write_dataset("webdataset", [cut], str(tmp_path / "strict"), "wds", strict=True)


def test_webdataset_tar_cut_between_members_is_still_truncated(tmp_path):
  path = tmp_path / "cut.tar"
  whole = make_tar(path, [("0.jpg", RED_JPEG), ("0.txt", b"kept"), ("1.jpg", GREEN_PNG),
                          ("1.txt", b"maybe"), ("2.jpg", RED_JPEG), ("2.txt", b"lost")])
  # Cut right after 1.txt's padded data, and inside the next header: tarfile itself just stops
  # iterating at both. The converter must report the cut, and drop sample 1, which may have lost
  # members (a .json after the cut).
  end_of_second = whole.index(b"maybe") + 512
  for cut_at in (end_of_second, end_of_second + 100):
    path.write_bytes(whole[:cut_at])
    items = list(converters.convert_unit("webdataset", str(path), converters.Options()))
    assert [i.id for i in items if not isinstance(i, converters.Skipped)] == ["cut/0"]
    assert [(i.key, i.reason) for i in items if isinstance(i, converters.Skipped)] == [
        ("1", "truncated tar")]

  # A .tar.gz missing only its last bytes: every member reads, but the gzip stream is cut.
  gz = tmp_path / "cut.tar.gz"
  gz.write_bytes(gzip.compress(whole)[:-10])
  items = list(converters.convert_unit("webdataset", str(gz), converters.Options()))
  assert [i.id for i in items if not isinstance(i, converters.Skipped)] == ["cut/0", "cut/1"]
  assert [(i.key, i.reason) for i in items if isinstance(i, converters.Skipped)] == [
      ("2", "truncated tar")]


def test_workers_give_identical_shards(tmp_path):
  complete, cut = webdataset_inputs(tmp_path)
  third = tmp_path / "part-002.tar"
  make_tar(third, [("200.png", GREEN_PNG), ("200.txt", b"third")])
  outputs = []
  for workers in (1, 2):
    out = tmp_path / f"out{workers}"
    converters.write_dataset("webdataset", [complete, cut, str(third)], str(out), "wds",
                             records_per_shard=2, workers=workers)
    outputs.append({name: (out / name).read_bytes() for name in sorted(os.listdir(out))})
  assert list(outputs[0]) == ["dataset_info.json", "wds-00000-of-00003.array_record",
                              "wds-00001-of-00003.array_record", "wds-00002-of-00003.array_record"]
  assert outputs[0] == outputs[1]


# --- interleaved ----------------------------------------------------------------------------------

def interleaved_inputs(tmp_path):
  write_files(tmp_path / "imgs", {"r.jpg": RED_JPEG, "g.png": GREEN_PNG, "bad.jpg": GARBAGE_JPG})
  mmc4 = tmp_path / "mmc4.jsonl"
  mmc4.write_text("\n".join([
      json.dumps({"url": "http://page/1", "text_list": ["First.", "Second.", "Third."],
                  "image_info": [{"image_name": "g.png", "matched_text_index": 2},
                                 {"raw_url": "http://cdn/x/r.jpg?s=1", "matched_text_index": 0},
                                 {"image_name": "gone.jpg", "matched_text_index": 1}]}),
      '{"text_list": ["cut',
      json.dumps({"something": "else"}),
      json.dumps({"text_list": ["Only."], "image_info": [{"image_name": "r.jpg",
                                                          "matched_text_index": 5}]}),
  ]) + "\n")
  obelics = tmp_path / "obelics.jsonl"
  obelics.write_text("\n".join([
      json.dumps({"texts": ["Intro", None, "Outro"], "images": [None, "https://h/a/g.png", None]}),
      json.dumps({"texts": [None, "Caption"], "images": ["https://h/bad.jpg", None]}),
      json.dumps({"texts": [None], "images": ["https://h/gone.jpg"]}),
  ]) + "\n")
  return str(mmc4), str(obelics)


def test_interleaved_drops_missing_images_by_default(tmp_path):
  mmc4, obelics = interleaved_inputs(tmp_path)
  out = tmp_path / "out"
  options = converters.Options(image_dir=str(tmp_path / "imgs"))
  summary = converters.write_dataset("interleaved", [mmc4, obelics], str(out), "docs", options)
  docs, info = read_back(out)
  assert [d.id for d in docs] == ["mmc4/1", "obelics/1", "obelics/2"]
  assert {d.task for d in docs} == {"interleaved"}
  # MMC4: each image right before the sentence it matches.
  assert segments(docs[0]) == [("image", "", RED_JPEG), ("text", "", "First."),
                               ("text", "", "Second."), ("image", "", GREEN_PNG),
                               ("text", "", "Third.")]
  assert docs[0].metadata == {"source": "mmc4.jsonl", "line": 1, "images": ["r.jpg", "g.png"],
                              "url": "http://page/1"}
  assert segments(docs[1]) == [("text", "", "Intro"), ("image", "", GREEN_PNG), ("text", "", "Outro")]
  assert segments(docs[2]) == [("text", "", "Caption")]
  assert skips(info) == [
      (mmc4, "line 1/gone.jpg", "missing image", "image"), (mmc4, "line 2", "bad json", "record"),
      (mmc4, "line 3", "malformed record", "record"), (mmc4, "line 4", "malformed record", "record"),
      (obelics, "line 2/bad.jpg", "corrupt image", "image"),
      (obelics, "line 3/gone.jpg", "missing image", "image"),
      (obelics, "line 3", "empty document", "record")]
  assert "dropped 3 images (corrupt image: 1, missing image: 2)" in summary.line()


def test_interleaved_can_skip_whole_documents(tmp_path):
  mmc4, obelics = interleaved_inputs(tmp_path)
  out = tmp_path / "out"
  options = converters.Options(image_dir=str(tmp_path / "imgs"), drop_missing_images=False)
  converters.write_dataset("interleaved", [mmc4, obelics], str(out), "docs", options)
  docs, info = read_back(out)
  assert [d.id for d in docs] == ["obelics/1"]
  assert skips(info) == [
      (mmc4, "line 1", "missing image", "record"), (mmc4, "line 2", "bad json", "record"),
      (mmc4, "line 3", "malformed record", "record"), (mmc4, "line 4", "malformed record", "record"),
      (obelics, "line 2", "corrupt image", "record"), (obelics, "line 3", "missing image", "record")]
  with pytest.raises(converters.ConversionError, match=re.escape(f"{mmc4}: line 1/gone.jpg: missing image")):
    converters.write_dataset("interleaved", [mmc4], str(tmp_path / "strict"), "docs",
                             converters.Options(image_dir=str(tmp_path / "imgs")), strict=True)


# --- interleaved_webdataset (DreamLLM's tars) -----------------------------------------------------

def dreamllm_tar(tmp_path):
  """Samples: a good one (images out of order, one matched weakly, one re-encoded to jpg under
  another extension, one corrupt), one naming an image it lacks, one with an index out of range,
  one whose json is cut, one without json; then a second tar cut inside its second sample."""
  def record(texts, infos, **extra):
    return json.dumps(dict(text_list=texts, image_info=infos, **extra)).encode()
  path = tmp_path / "docs-000.tar"
  make_tar(path, [
      ("s0.json", record(["First.", "Second.", "Third."], [
          {"image_name": "b.png", "matched_text_index": 2, "matched_sim": 0.31},
          {"image_name": "a.webp", "matched_text_index": 0, "matched_sim": 0.28},
          {"image_name": "weak.jpg", "matched_text_index": 1, "matched_sim": 0.1},
          {"image_name": "bad.jpg", "matched_text_index": 1}], url="http://page/0")),
      ("s0.b.png", GREEN_PNG), ("s0.a.jpg", RED_JPEG), ("s0.weak.jpg", RED_JPEG),
      ("s0.bad.jpg", GARBAGE_JPG),
      ("s1.json", record(["Alone."], [{"image_name": "gone.jpg", "matched_text_index": 0}])),
      ("s2.json", record(["Only."], [{"image_name": "x.jpg", "matched_text_index": 3}])),
      ("s2.x.jpg", RED_JPEG),
      ("s3.json", b'{"text_list": ["cut'),
      ("s4.jpg", RED_JPEG),
  ])
  cut = tmp_path / "docs-001.tar"
  whole = make_tar(cut, [("t0.json", record(["Kept."], [])),
                         ("t1.json", record(["Lost."], [{"image_name": "n.jpg",
                                                         "matched_text_index": 0}])),
                         ("t1.n.jpg", noisy_jpeg(5))])
  cut.write_bytes(whole[:whole.index(noisy_jpeg(5)) + 100])
  return str(path), str(cut)


def test_interleaved_webdataset_places_images_after_their_sentence_and_counts_what_it_drops(
    tmp_path):
  path, cut = dreamllm_tar(tmp_path)
  out = tmp_path / "out"
  summary = converters.write_dataset("interleaved_webdataset", [path, cut], str(out), "docs",
                                     converters.Options(min_sim=0.25))
  docs, info = read_back(out)
  assert [d.id for d in docs] == ["docs-000/s0", "docs-000/s1", "docs-001/t0"]
  assert {d.task for d in docs} == {"interleaved"}
  # DreamLLM's order: each image right after its matched sentence, whatever image_info's order.
  assert segments(docs[0]) == [("text", "", "First."), ("image", "", RED_JPEG),
                               ("text", "", "Second."), ("text", "", "Third."),
                               ("image", "", GREEN_PNG)]
  assert docs[0].metadata == {"tar": "docs-000.tar", "key": "s0", "url": "http://page/0",
                              "images": ["a.webp", "b.png"]}
  assert segments(docs[1]) == [("text", "", "Alone.")]
  assert skips(info) == [
      (path, "s0/weak.jpg", "low similarity", "image"),
      (path, "s0/bad.jpg", "corrupt image", "image"),
      (path, "s1/gone.jpg", "missing image", "image"),
      (path, "s2", "malformed record", "record"),
      (path, "s3", "bad json", "record"),
      (path, "s4", "malformed record", "record"),
      (cut, "t1", "truncated tar", "record")]
  assert "matched_text_index=3 for 1 texts" in info["skipped"][3]["detail"]
  assert "dropped 3 images" in summary.line()

  # Without min_sim every image is kept; without drop_missing_images a bad image skips the
  # whole document, and strict runs stop at it by name.
  docs, _ = (converters.write_dataset("interleaved_webdataset", [path], str(tmp_path / "all"),
                                      "docs"), read_back(tmp_path / "all"))[1]
  assert [len(d.images()) for d in docs] == [3, 0]
  whole = converters.write_dataset("interleaved_webdataset", [path], str(tmp_path / "whole"),
                                   "docs", converters.Options(drop_missing_images=False))
  with open(tmp_path / "whole" / shards.INFO_FILE) as f:
    info = json.load(f)
  assert whole.num_records == 0 and skips(info)[:2] == [(path, "s0", "corrupt image", "record"),
                                                        (path, "s1", "missing image", "record")]
  with pytest.raises(converters.ConversionError, match=re.escape(f"{path}: s0/bad.jpg: corrupt")):
    converters.write_dataset("interleaved_webdataset", [path], str(tmp_path / "strict"), "docs",
                             strict=True)


# --- tfds -----------------------------------------------------------------------------------------

TFDS_EXAMPLES = [(GREEN_PNG, "green", 0), (RED_JPEG, "red", 1), (GARBAGE_JPG, "garbage", 2),
                 (BLUE_WEBP, "", 3), (noisy_jpeg(4), "noise", 4)]


def build_tiny_tfds(data_dir) -> str:
  """Prepare a tiny captioned-image dataset as array_record, offline; returns its version dir."""
  import tensorflow_datasets as tfds

  # skip_registration: the converter must find the dataset from its files alone, as it would a
  # dataset prepared elsewhere (and worker processes never see this class).
  class TinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to look for beside this code: tfds's lookup would import the missing
    # `importlib_resources` backport, since this module sits in a package.
    code_path = None

    def _info(self):
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(), "caption": tfds.features.Text(),
          "number": tfds.features.Scalar(np.int64)})
      # disable_shuffling: example i of the generator is record i of the split.
      return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for image, caption, number in TFDS_EXAMPLES:  # encoded bytes are stored as they are
        yield str(number), {"image": image, "caption": caption, "number": number}

  builder = TinyCaptions(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)


def test_tfds_without_tensorflow(tmp_path, monkeypatch):
  assert "tensorflow" not in sys.modules
  version_dir = build_tiny_tfds(tmp_path / "tfds")
  monkeypatch.setattr(tfds_source, "RECORDS_PER_UNIT", 2)  # three units, for two workers
  out = tmp_path / "out"
  options = converters.Options(tfds_name="tiny_captions", tfds_data_dir=str(tmp_path / "tfds"))
  converters.write_dataset("tfds", [], str(out), "tiny", options, workers=2)
  docs, info = read_back(out)
  assert [d.id for d in docs] == ["tiny_captions/train/0", "tiny_captions/train/1",
                                  "tiny_captions/train/4"]
  assert segments(docs[0]) == [("image", "", GREEN_PNG), ("text", "", "green")]
  assert segments(docs[1]) == [("image", "", RED_JPEG), ("text", "", "red")]
  assert docs[2].images() == [TFDS_EXAMPLES[4][0]]
  assert docs[1].metadata == {"tfds": "tiny_captions", "split": "train", "index": 1, "number": 1}
  source = "tfds:tiny_captions[train]"
  assert skips(info) == [(source, "2", "corrupt image", "record"),
                         (source, "3", "missing caption", "record")]
  assert "tensorflow" not in sys.modules

  # The version directory alone works too, and split slices do.
  by_dir = converters.Options(tfds_data_dir=version_dir, split="train[:2]")
  converters.write_dataset("tfds", [], str(tmp_path / "by_dir"), "tiny", by_dir)
  assert [d.id for d in shards.read_documents(str(tmp_path / "by_dir"))] == [
      "tiny_captions/train[:2]/0", "tiny_captions/train[:2]/1"]
  with pytest.raises(converters.ConversionError, match="--text_key='captions' is not a feature"):
    converters.write_dataset("tfds", [], str(tmp_path / "bad_key"), "tiny",
                             converters.Options(tfds_data_dir=version_dir, text_key="captions"))


# --- the command line -----------------------------------------------------------------------------

def run_tool(*args):
  return subprocess.run([sys.executable, "tools/write_shards.py", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=120)


def test_cli(tmp_path):
  help_text = run_tool("--help")
  assert help_text.returncode == 0
  for expected in ("--format", "--input", "--image_dir", "--records_per_shard", "--workers",
                   "--strict", "--drop_missing_images", "--tfds_name", "--split", "--image_key",
                   "--text_key", "--format=llava", "--format=webdataset", "--format=interleaved",
                   "--format=interleaved_webdataset", "--min_sim", "--format=tfds"):
    assert expected in help_text.stdout, expected
  misplaced = run_tool("--format=llava", "--input=x.json", "--out_dir=o", "--name=n",
                       "--min_sim=0.2")
  assert misplaced.returncode == 2
  assert "--min_sim applies to --format=interleaved_webdataset, not llava" in misplaced.stderr

  good, bad, _ = llava_inputs(tmp_path)
  common_flags = ["--format=llava", f"--image_dir={tmp_path / 'images'}", "--name=llava",
                  "--no_progress"]
  ok = run_tool(*common_flags, f"--input={good},{tmp_path / 'broken.*'}",
                f"--out_dir={tmp_path / 'out'}", "--records_per_shard=3")
  assert ok.returncode == 0, ok.stderr
  assert "wrote 4 records in 2 shards" in ok.stdout and "skipped 7 records" in ok.stdout
  docs, info = read_back(tmp_path / "out")
  assert [d.id for d in docs] == ["r1", "r2", "r3", "r9"] and len(info["skipped"]) == 7
  assert info["created_by"] == "tools/write_shards.py --format=llava"

  again = run_tool(*common_flags, f"--input={good}", f"--out_dir={tmp_path / 'out'}")
  assert again.returncode == 1 and "already holds a dataset" in again.stderr

  strict = run_tool(*common_flags, f"--input={good}", f"--out_dir={tmp_path / 'strict'}", "--strict")
  assert strict.returncode == 1
  assert f"error: {good}: r4: missing image" in strict.stderr
