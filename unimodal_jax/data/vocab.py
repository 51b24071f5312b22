"""The unified vocabulary: sentencepiece text tokens, then special tokens, then image codes.

    [0, text_size)                          text (sentencepiece; its bos/eos/pad ids included)
    [text_size, text_size + len(SPECIALS))  special tokens below
    [image_offset, image_offset + codes)    the vision tokenizer's codebook (ILLUME's
                                            "vision embed & head" rows)

One vocabulary serves both models, so one set of pre-tokenized documents trains either: ILLUME
leaves the three dream rows unused, DreamLLM (image_codes = 0) the slice separator. Vicuna-7B with
ILLUME's codebook: 32,000 + 7 + 16,384 = 48,391 (experiments/illume/vicuna7b.py).
"""
from __future__ import annotations

import dataclasses

# Opening and closing an image (codes between them when ILLUME writes it, <image_patch> slots when
# a model reads it: the slot of one continuous image feature), the separator that opens a row of
# high-resolution slices of an image read (data/slicing.py), and DreamLLM's: <dream_start> (where
# the model decides to draw), the slots of its learned dream queries, <dream_end>.
SPECIALS = ("<image_start>", "<image_end>", "<image_patch>", "<slice_sep>",
            "<dream_start>", "<dream_end>", "<dream_query>")


@dataclasses.dataclass(frozen=True)
class Vocab:
  text_size: int
  image_codes: int = 0
  bos_id: int = 2
  eos_id: int = 3
  pad_id: int = 0

  @property
  def image_start(self) -> int:
    return self.text_size + SPECIALS.index("<image_start>")

  @property
  def image_end(self) -> int:
    return self.text_size + SPECIALS.index("<image_end>")

  @property
  def image_patch(self) -> int:
    return self.text_size + SPECIALS.index("<image_patch>")

  @property
  def slice_sep(self) -> int:
    return self.text_size + SPECIALS.index("<slice_sep>")

  @property
  def dream_start(self) -> int:
    return self.text_size + SPECIALS.index("<dream_start>")

  @property
  def dream_end(self) -> int:
    return self.text_size + SPECIALS.index("<dream_end>")

  @property
  def dream_query(self) -> int:
    return self.text_size + SPECIALS.index("<dream_query>")

  @property
  def image_offset(self) -> int:
    return self.text_size + len(SPECIALS)

  @property
  def size(self) -> int:
    return self.image_offset + self.image_codes

  def image_token(self, code):
    """Vocabulary id(s) of image code(s)."""
    return code + self.image_offset

  @classmethod
  def from_sentencepiece(cls, sp, image_codes: int = 0) -> "Vocab":
    return cls(text_size=sp.get_piece_size(), image_codes=image_codes, bos_id=sp.bos_id(),
               eos_id=sp.eos_id(), pad_id=max(sp.pad_id(), 0))
