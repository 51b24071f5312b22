"""Procedurally generated worlds: synthetic data whose ground truth is known exactly, so tiny
multimodal experiments can be trained on them and their outputs scored without a human or a
learned judge (see shapes.py and unimodal_jax/eval/shapes_judge.py).

Every caller (the data pipeline's world sources, the CLIP and tokenizer experiments, the
pre-tokenized data of the main job, tools/write_world_shards.py) gets its documents here:

    doc = worlds.make_document("shapes", "conversation", seed=0, index=17, size=32)

    world    tasks                                                      split   default size
    shapes   caption, text_to_image, conversation, dialogue, edit,      -       64
             interleaved, geneval (GenEval-style prompt -> scene)
    digits   caption, text_to_image                                     train,  32
                                                                        judge_train, judge_test
A document is a function of (world, task, seed, index, size, split) alone.
"""
from __future__ import annotations

from unimodal_jax.data.documents import Document

WORLDS = ("shapes", "digits")
DEFAULT_SIZE = {"shapes": 64, "digits": 32}
DIGITS_TASKS = ("caption", "text_to_image")


def tasks(world: str) -> tuple[str, ...]:
  if world == "shapes":
    from unimodal_jax.data.worlds import shapes
    return tuple(shapes.DOCUMENT_TASKS) + ("geneval",)
  if world == "digits":
    return DIGITS_TASKS
  raise ValueError(f"world {world!r}; expected one of {WORLDS}")


def check(world: str, task: str, split: str = "train", where: str = "world") -> None:
  """Raise, naming `where`, unless the world has this task and split."""
  if world not in WORLDS:
    raise ValueError(f"{where}: world {world!r}; expected one of {WORLDS}")
  if task not in tasks(world):
    raise ValueError(f"{where}: the {world} world has no task {task!r}; expected one of "
                     f"{tasks(world)}")
  if world == "digits":
    from unimodal_jax.data.worlds import digits
    if split not in digits.SPLITS:
      raise ValueError(f"{where}: digits split {split!r}; expected one of {sorted(digits.SPLITS)}")
  elif split != "train":
    raise ValueError(f"{where}: the shapes world has no splits (held-out data is another seed)")


def make_document(world: str, task: str, seed: int, index: int, size: int | None = None,
                  split: str = "train") -> Document:
  """Document `index` of the stream (world, task, seed) with images of `size` pixels."""
  size = DEFAULT_SIZE[world] if size is None else int(size)
  if world == "shapes" and task == "geneval":
    from unimodal_jax.data.worlds import geneval
    return geneval.make_document(seed, index, size=size)
  if world == "shapes":
    from unimodal_jax.data.worlds import shapes
    return shapes.make_document(seed, index, task, size=size)
  if world == "digits":
    from unimodal_jax.data.worlds import digits
    return digits.document(index, task=task, split_name=split, size=size, seed=seed)
  raise ValueError(f"world {world!r}; expected one of {WORLDS}")


def default_count(world: str, split: str = "train") -> int:
  """How many distinct documents a stream holds before it repeats (shapes: endless, so a
  working default)."""
  if world == "digits":
    from unimodal_jax.data.worlds import digits
    return len(digits.split(split)[1])
  return 10_000
