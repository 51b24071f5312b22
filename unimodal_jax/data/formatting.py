"""Documents -> model examples: token ids, next-token targets with their mask and modality, and
the pixels of the images the model reads.

Every task becomes one token sequence in the unified vocabulary (vocab.py):
  - an image the model *reads* (understanding) is <image_start> <image_patch> x tokens_per_image
    <image_end>, never a target; the model puts the adapter's features at the patch slots,
    in order, from `images`; with `max_slices` > 1 a large image is read as a global view plus
    a grid of slices (data/slicing.py), each view one entry of `images`;
  - an image the model *writes* (generation) is <image_start> codes... <image_end>, all targets
    (modality 'image'); its codes come from an `image_tokens` segment or the image tokenizer;
    with `dream_queries` > 0 (DreamLLM) it is instead <dream_start>* <dream_query> x
    dream_queries <dream_end>, <dream_start> the only target (where an image goes), its pixels
    in `dream_images` (what the diffusion loss draws); in an interleaved document the drawn
    image is then read as well, so the text after it sees the real image (DreamLLM's layout);
  - text is sentencepiece ids; which text is a target depends on the task:
      caption        BOS [image] caption* EOS*                  (* = target)
      text_to_image  BOS caption [image*] EOS*                  (caption dropped with p=text_dropout
                                                                 for classifier-free guidance)
      reconstruction BOS [image] [image*] EOS*                  (ILLUME stage 1)
      conversation   BOS system USER: ... ASSISTANT: answer* EOS* USER: ...
      edit           as conversation: the user's image is read, the assistant's image written
                     (the instruction dropped with p=text_dropout, for CFG)
      interleaved    BOS text* [image] text* ... EOS*           (images read, text learned;
                                                                 ILLUME: an image_tokens segment
                                                                 before an image writes it first,
                                                                 [image*] [image], DreamLLM: each
                                                                 image dreamed, then read)
The example holds inputs = sequence[:-1], targets = sequence[1:], so packing several examples in
one row never predicts across their boundary.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from unimodal_jax.data import documents, images, slicing
from unimodal_jax.data.vocab import Vocab

TEXT, IMAGE = 0, 1  # target modality ids (train/losses.py MODALITIES)


@dataclasses.dataclass(frozen=True)
class FormatConfig:
  max_length: int = 512  # inputs per example (and per packed row)
  image_size: int = 64  # pixels of images the model reads (of each view, when sliced)
  tokens_per_image: int = 16  # <image_patch> slots per image read (per view, when sliced)
  max_images: int = 4  # images (views, when sliced) read per example (and per packed row)
  max_slices: int = 0  # >1: high-resolution reading, up to this many slices (ILLUME stage 3: 9)
  text_dropout: float = 0.1  # text_to_image: caption dropped (CFG's unconditional branch)
  # DreamLLM: > 0 writes images as <dream_start> + this many query slots + <dream_end>.
  dream_queries: int = 0
  dream_image_size: int = 0  # pixels of images drawn (0: image_size)
  max_dream_images: int = 1  # images drawn per example (and per packed row)
  system_prompt: str = ""
  user_prefix: str = "USER:"
  assistant_prefix: str = "ASSISTANT:"


class Skip(Exception):
  """This document cannot become an example; the reason is counted (or raised when strict)."""


class _Sequence:
  def __init__(self):
    self.tokens, self.target, self.modality, self.images = [], [], [], []
    self.dream_images = []

  def add(self, ids, target: bool, modality: int = TEXT):
    ids = [int(i) for i in ids]
    self.tokens += ids
    self.target += [target] * len(ids)
    self.modality += [modality] * len(ids)


class Formatter:
  """Callable (document, rng) -> example dict of numpy arrays. Raises Skip."""

  def __init__(self, tokenizer, vocab: Vocab, config: FormatConfig,
               image_tokenizer: Callable[[np.ndarray], np.ndarray] | None = None):
    self.sp, self.vocab, self.config = tokenizer, vocab, config
    self.image_tokenizer = image_tokenizer

  # -- pieces
  def _text(self, seq: _Sequence, text: str, target: bool):
    if text:
      seq.add(self.sp.encode(text), target)

  def _read_image(self, seq: _Sequence, segment: documents.Segment, where: str):
    cfg = self.config
    if segment.type != "image":
      raise Skip("image to read has no pixels (image_tokens only)")
    try:
      if cfg.max_slices > 1:
        whole = images.decode_rgb(segment.image, where)
        grid = slicing.choose_grid(whole.shape[0], whole.shape[1], cfg.image_size,
                                   cfg.max_slices)
        views = list(slicing.slice_views(whole, cfg.image_size, grid))
      else:
        grid, views = slicing.NO_SLICES, [images.decode_resize(segment.image, cfg.image_size,
                                                               where)]
    except images.ImageError as e:
      raise Skip(f"undecodable image ({e})") from e
    if len(seq.images) + len(views) > cfg.max_images:
      raise Skip(f"more than {cfg.max_images} images to read"
                 + (" (views: a global view and slices)" if cfg.max_slices > 1 else ""))
    seq.images += views
    seq.add(slicing.view_token_ids(self.vocab, cfg.tokens_per_image, grid), target=False)

  def _write_image(self, seq: _Sequence, segment: documents.Segment, where: str):
    if self.config.dream_queries:
      return self._dream_image(seq, segment, where)
    if segment.type == "image_tokens":
      codes = np.asarray(segment.tokens)
    elif self.image_tokenizer is not None:
      try:
        pixels = images.decode_resize(segment.image, self.config.image_size, where)
      except images.ImageError as e:
        raise Skip(f"undecodable image ({e})") from e
      codes = np.asarray(self.image_tokenizer(pixels)).ravel()
    else:
      raise Skip("image to write has no tokens and no image tokenizer is configured")
    if self.vocab.image_codes and (codes.min() < 0 or codes.max() >= self.vocab.image_codes):
      raise Skip(f"image codes outside [0, {self.vocab.image_codes})")
    v = self.vocab
    seq.add([v.image_start], True, IMAGE)
    seq.add(v.image_token(codes), True, IMAGE)
    seq.add([v.image_end], True, IMAGE)

  def _dream_image(self, seq: _Sequence, segment: documents.Segment, where: str):
    cfg, v = self.config, self.vocab
    if segment.type != "image":
      raise Skip("image to draw has no pixels (image_tokens only; DreamLLM draws pixels)")
    if len(seq.dream_images) >= cfg.max_dream_images:
      raise Skip(f"more than {cfg.max_dream_images} images to draw")
    try:
      pixels = images.decode_resize(segment.image, cfg.dream_image_size or cfg.image_size, where)
    except images.ImageError as e:
      raise Skip(f"undecodable image ({e})") from e
    seq.dream_images.append(pixels)
    seq.add([v.dream_start], True, IMAGE)
    seq.add([v.dream_query] * cfg.dream_queries, False, IMAGE)
    seq.add([v.dream_end], False, IMAGE)

  # -- tasks
  def _one(self, doc, type_):
    found = [s for s in doc.segments if s.type in type_]
    if not found:
      raise Skip(f"task {doc.task} needs a segment of type {'/'.join(type_)}")
    return found[0]

  def _caption(self, doc, seq, rng, where):
    self._read_image(seq, self._one(doc, ("image",)), where)
    self._text(seq, self._one(doc, ("text",)).text, target=True)

  def _text_to_image(self, doc, seq, rng, where):
    caption = self._one(doc, ("text",)).text
    if rng is not None and rng.random() < self.config.text_dropout:
      caption = ""
    self._text(seq, caption, target=False)
    self._write_image(seq, self._one(doc, ("image", "image_tokens")), where)

  def _reconstruction(self, doc, seq, rng, where):
    image = self._one(doc, ("image",))
    self._read_image(seq, image, where)
    tokens = [s for s in doc.segments if s.type == "image_tokens"]
    self._write_image(seq, tokens[0] if tokens else image, where)

  def _dialogue(self, doc, seq, rng, where):
    cfg, role = self.config, None
    self._text(seq, cfg.system_prompt, target=False)
    if not any(s.role == "assistant" for s in doc.segments):
      raise Skip(f"task {doc.task} has no assistant turn")
    # Edits drop the instruction like text_to_image drops the caption (CFG's unconditional
    # branch for editing: the user's image kept, the instruction masked).
    drop_instruction = (doc.task == "edit" and rng is not None
                        and rng.random() < self.config.text_dropout)
    for seg in doc.segments:
      if seg.role not in ("user", "assistant"):
        raise Skip(f"task {doc.task}: segment role {seg.role!r} (expected user/assistant)")
      if seg.role != role:
        if role == "assistant":
          seq.add([self.vocab.eos_id], target=True)
        self._text(seq, cfg.user_prefix if seg.role == "user" else cfg.assistant_prefix, False)
        role = seg.role
      assistant = seg.role == "assistant"
      if seg.type == "text":
        if not (drop_instruction and not assistant):
          self._text(seq, seg.text, target=assistant)
      elif assistant:
        self._write_image(seq, seg, where)
      else:
        self._read_image(seq, seg, where)
    if role == "assistant":
      seq.add([self.vocab.eos_id], target=True)

  def _interleaved(self, doc, seq, rng, where):
    for seg in doc.segments:
      if seg.type == "text":
        self._text(seq, seg.text, target=True)
      elif seg.type == "image_tokens":  # ILLUME writes an image in place: its codes are targets
        self._write_image(seq, seg, where)
      else:
        if self.config.dream_queries:  # DreamLLM draws each image, then reads the real one
          self._dream_image(seq, seg, where)
        self._read_image(seq, seg, where)

  def placed_image(self, image: bytes, codes=None, where: str = "placed image"):
    """(token ids, views read) of an image a model placed in an interleaved document, laid out
    as `_interleaved` lays out training documents: DreamLLM's <dream_start> block, or ILLUME's
    written `codes`, then the image read. Raises Skip as the formatter does."""
    segments = ([] if codes is None else [documents.Segment.of_image_tokens(codes)]) + [
        documents.Segment.of_image(image)]
    seq = _Sequence()
    self._interleaved(documents.Document(where, "interleaved", segments), seq, None, where)
    return seq.tokens, seq.images

  def __call__(self, doc: documents.Document, rng=None, where: str = "") -> dict:
    task = {"caption": self._caption, "text_to_image": self._text_to_image,
            "reconstruction": self._reconstruction, "conversation": self._dialogue,
            "edit": self._dialogue, "interleaved": self._interleaved}.get(doc.task)
    if task is None:
      raise Skip(f"unknown task {doc.task!r}")
    seq = _Sequence()
    seq.add([self.vocab.bos_id], target=False)
    task(doc, seq, rng, where or doc.id)
    if task != self._dialogue:  # dialogues end each assistant turn with EOS themselves
      seq.add([self.vocab.eos_id], target=True)
    if len(seq.tokens) - 1 > self.config.max_length:
      raise Skip(f"too long: {len(seq.tokens) - 1} tokens > max_length {self.config.max_length}")
    tokens = np.asarray(seq.tokens, np.int32)
    size = self.config.image_size
    pixels = (np.stack(seq.images) if seq.images else np.zeros((0, size, size, 3), np.uint8))
    example = {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "target_mask": np.asarray(seq.target[1:], np.float32),
        "target_modality": np.asarray(seq.modality[1:], np.int32),
        "images": pixels,
    }
    if self.config.dream_queries:
      side = self.config.dream_image_size or size
      example["dream_images"] = (np.stack(seq.dream_images) if seq.dream_images
                                 else np.zeros((0, side, side, 3), np.uint8))
    return example
