"""The unified vocabulary: sentencepiece text tokens, then special tokens, then image codes.

    [0, text_size)                          text (sentencepiece; its bos/eos/pad ids included)
    [text_size, text_size + len(SPECIALS))  special tokens below
    [image_offset, image_offset + codes)    the vision tokenizer's codebook (ILLUME's
                                            "vision embed & head" rows)

Vicuna-7B with ILLUME's codebook: 32,000 + 4 + 16,384 = 48,388 (experiments/illume/vicuna7b.py).
"""
from __future__ import annotations

import dataclasses

# Opening and closing an image (codes between them when the model writes it, <image_patch> slots
# when it reads it: the slot of one continuous image feature), and the separator that opens a row
# of high-resolution slices of an image read (data/slicing.py).
SPECIALS = ("<image_start>", "<image_end>", "<image_patch>", "<slice_sep>")


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
