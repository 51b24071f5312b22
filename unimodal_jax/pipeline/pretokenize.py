"""The ILLUME recipe's training documents with every image the model *writes* already turned into
codes by the trained tokenizer ("pre-tokenized data"), one shard directory per task:

    caption         shapes captions (image read, caption written)           no codes needed
    reconstruction  a scene read, then the same scene written as codes      (ILLUME stage 1)
    text_to_image   shapes captions -> codes
    geneval         GenEval-style prompts -> codes of a scene that satisfies them
    conversation    POPE-style / counting / color / position questions      no codes needed
    dialogue        up to six such questions about one image                no codes needed
    edit            image + instruction -> codes of the edited scene
    story           interleaved: a scene's sentence, its picture, an edit's sentence, the
                    edited picture; each picture written as codes, then read (ILLUME's layout
                    of an image placed in a document, data/formatting.py)

Images the model *reads* stay pixels: the ILLUME model encodes them itself (its encoder trains in
stage 3). DreamLLM's job writes the same tasks with every image as pixels (tokenize=None). A task directory is written to a temporary name and renamed when complete, so a killed
run never leaves a half-written task behind.
"""
from __future__ import annotations

import os
import shutil
import time

import numpy as np

from unimodal_jax.data import documents, images as images_lib, shards
from unimodal_jax.data.documents import Document, Segment
from unimodal_jax.data import worlds

TASKS = ("caption", "reconstruction", "text_to_image", "geneval", "conversation", "dialogue",
         "edit", "story")
_CHUNK = 512  # documents tokenized per batch


def _world_document(task: str, seed: int, index: int, size: int) -> Document:
  # Reconstruction reads a caption document's scene and writes the same scene as codes.
  world_task = {"reconstruction": "caption"}.get(task, task)
  return worlds.make_document("shapes", world_task, seed, index, size)


def _written_image(doc: Document) -> int | None:
  """Index of the segment the model writes, or None."""
  if doc.task == "text_to_image":
    return next(i for i, s in enumerate(doc.segments) if s.type == "image")
  if doc.task == "edit":
    return next(i for i, s in enumerate(doc.segments) if s.type == "image" and
                s.role == "assistant")
  return None


def tokenized_documents(task: str, seed: int, start: int, count: int, size: int, tokenize):
  """Documents [start, start + count) of a task with written images replaced by their codes
  (tokenize None: kept as pixels, for DreamLLM, which draws pixels)."""
  docs = [_world_document(task, seed, i, size) for i in range(start, start + count)]
  if tokenize is None:
    if task == "reconstruction":
      raise ValueError("the reconstruction task writes codes; it needs an image tokenizer")
    return docs
  if task == "reconstruction":
    pixels = [d.segments[0].image for d in docs]
  elif task == "story":
    return _written_in_place(docs, size, tokenize)
  else:
    written = [_written_image(d) for d in docs]
    if all(w is None for w in written):
      return docs
    pixels = [d.segments[w].image for d, w in zip(docs, written)]
  arrays = np.stack([images_lib.decode_resize(p, size, where=d.id) for p, d in zip(pixels, docs)])
  codes = tokenize(arrays)
  out = []
  for d, c in zip(docs, codes):
    if task == "reconstruction":
      segs = [d.segments[0], Segment.of_image_tokens(c)]
      out.append(Document(d.id.replace("/caption/", "/reconstruction/"), "reconstruction", segs,
                          d.metadata).validate())
    else:
      w = _written_image(d)
      segs = list(d.segments)
      segs[w] = Segment.of_image_tokens(c, role=segs[w].role)
      out.append(Document(d.id, d.task, segs, d.metadata).validate())
  return out


def _written_in_place(docs: list[Document], size: int, tokenize) -> list[Document]:
  """Interleaved documents with each image preceded by its codes: written, then read."""
  pixels = [images_lib.decode_resize(seg.image, size, where=d.id)
            for d in docs for seg in d.segments if seg.type == "image"]
  codes = iter(tokenize(np.stack(pixels)))
  out = []
  for d in docs:
    segs = []
    for seg in d.segments:
      segs += [Segment.of_image_tokens(next(codes)), seg] if seg.type == "image" else [seg]
    out.append(Document(d.id, d.task, segs, d.metadata).validate())
  return out


def write_task(directory: str, task: str, seed: int, count: int, size: int, tokenize,
               log=print) -> int:
  """Write `count` documents of a task to `directory` (complete or not at all)."""
  if task not in TASKS:
    raise ValueError(f"pre-tokenized task {task!r}; expected one of {TASKS}")
  tmp = directory + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  path = shards.shard_path(tmp, task, 0, 1)
  start = time.time()

  def stream():
    for i in range(0, count, _CHUNK):
      yield from tokenized_documents(task, seed, i, min(_CHUNK, count - i), size, tokenize)

  n = shards.write_shard(path, stream())
  shards.write_info(tmp, task, [(path, n)], [], created_by="unimodal_jax.pipeline.pretokenize")
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)
  log(f"data: {task}: {n} documents in {time.time() - start:.1f}s -> {directory}")
  return n


def read_codes(directory: str) -> list[list[int]]:
  """The image codes written in a task directory (for checks and statistics)."""
  return [s.tokens for d in shards.read_documents(directory) for s in d.segments
          if s.type == "image_tokens"]


__all__ = ["TASKS", "tokenized_documents", "write_task", "read_codes", "documents"]
