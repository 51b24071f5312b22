"""The pipeline's pre-tokenized shards: each written image becomes exactly its codes, read images
stay pixels, and a task directory is complete or absent."""
import numpy as np
import pytest

from unimodal_jax.data import images as images_lib, shards
from unimodal_jax.data.worlds import shapes
from unimodal_jax.pipeline import pretokenize


def fake_tokenize(images):
  """A deterministic function of the pixels: 4 'codes' per image."""
  x = images.astype(np.int64)
  return np.stack([x[:, :16, :16].sum((1, 2, 3)) % 97, x[:, 16:, :16].sum((1, 2, 3)) % 97,
                   x[:, :16, 16:].sum((1, 2, 3)) % 97, x[:, 16:, 16:].sum((1, 2, 3)) % 97], 1)


@pytest.mark.parametrize("task", ["text_to_image", "edit", "reconstruction", "geneval"])
def test_written_images_become_their_codes(tmp_path, task):
  d = str(tmp_path / task)
  assert pretokenize.write_task(d, task, seed=0, count=6, size=32, tokenize=fake_tokenize,
                                log=lambda *a: None) == 6
  docs = list(shards.read_documents(d))
  assert len(docs) == 6 and not (tmp_path / f"{task}.partial").exists()
  for i, doc in enumerate(docs):
    written = [s for s in doc.segments if s.type == "image_tokens"]
    assert len(written) == 1
    if task == "geneval":
      from unimodal_jax.data.worlds import geneval
      original = geneval.make_document(0, i, size=32)
    else:
      original = shapes.make_document(0, i, "caption" if task == "reconstruction" else task, 32)
    pixels = [s for s in original.segments if s.type == "image"][-1]
    expect = fake_tokenize(images_lib.decode_resize(pixels.image, 32, "t")[None])[0]
    assert written[0].tokens == [int(c) for c in expect]
    if task in ("edit", "reconstruction"):  # the image the model reads stays pixels
      assert doc.segments[0].type == "image"
    if task == "edit":
      assert written[0].role == "assistant"


def test_story_pictures_are_written_as_codes_then_read(tmp_path):
  """ILLUME's layout of a picture placed in a document: its codes, then its pixels; DreamLLM's
  (no tokenizer) keeps the pixels alone."""
  d = str(tmp_path / "story")
  pretokenize.write_task(d, "story", 0, 5, 32, fake_tokenize, log=lambda *a: None)
  for i, doc in enumerate(shards.read_documents(d)):
    original = shapes.make_document(0, i, "story", 32)
    expected = []
    for seg in original.to_dict()["segments"]:
      if seg["type"] == "image":
        codes = fake_tokenize(images_lib.decode_resize(seg["image"], 32, "t")[None])[0]
        expected.append({"type": "image_tokens", "role": "", "tokens": [int(c) for c in codes]})
      expected.append(seg)
    assert doc.to_dict()["segments"] == expected
    assert doc.task == "interleaved" and len(doc.metadata["scenes"]) == 2
  pretokenize.write_task(str(tmp_path / "pixels"), "story", 0, 2, 32, None, log=lambda *a: None)
  assert [d.to_dict() for d in shards.read_documents(str(tmp_path / "pixels"))] == [
      shapes.make_document(0, i, "story", 32).to_dict() for i in range(2)]


@pytest.mark.parametrize("task", ["conversation", "dialogue"])
def test_tasks_without_written_images_are_unchanged(tmp_path, task):
  d = str(tmp_path / task)
  pretokenize.write_task(d, task, 0, 4, 32, fake_tokenize, log=lambda *a: None)
  for i, doc in enumerate(shards.read_documents(d)):
    assert doc.to_dict() == shapes.make_document(0, i, task, 32).to_dict()


def test_unknown_task_is_named(tmp_path):
  with pytest.raises(ValueError, match="'saga'"):
    pretokenize.write_task(str(tmp_path / "x"), "saga", 0, 1, 32, fake_tokenize)
