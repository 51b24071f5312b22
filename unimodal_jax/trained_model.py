"""A trained ILLUME or DreamLLM from its main job's workdir, ready to draw, answer and edit:

    import unimodal_jax
    model = unimodal_jax.load("DIR")        # a main job's workdir, or one of its stage dirs
    images = model.generate_image(["a photo of two red circles"])   # PIL images
    model.answer(images, ["How many circles are there?"])           # ["two"]
    model.edit(images, ["make the circle on the left blue"])        # ILLUME's job only
    docs = model.generate_document(["This picture shows a red circle."])  # text and images

Every setting comes from the config the job saved (DIR/config.json): the sampling of its
evaluation (ILLUME: code temperature, top-k, guidance, pixel-decoder steps; DreamLLM: U-Net steps
and guidance), the image size and the batch. Calls take lists (a single string or image is a list
of one), run in batches of that size, and return one result per input. Images are PIL images or
uint8 [H, W, 3] arrays; one of another size is resized as the training data was (shorter side to
the model's size, centre square cropped). A prompt longer than the model's context is refused
with its length and the limit.
"""
from __future__ import annotations

import os

import numpy as np

STAGES = ("stage3", "stage2", "stage1")  # the last trained one is loaded by default


def _locate(directory: str) -> tuple[str, str]:
  """(workdir, stage directory) of a workdir or of one of its stage directories."""
  from unimodal_jax.checkpoints import TRAIN_SUBDIR
  d = os.path.abspath(directory)
  if not os.path.isdir(d):
    raise FileNotFoundError(f"{directory}: no such directory")
  if os.path.exists(os.path.join(d, "phases.json")):
    trained = [os.path.join(d, s) for s in STAGES
               if os.path.isdir(os.path.join(d, s, TRAIN_SUBDIR))]
    if not trained:
      raise FileNotFoundError(f"{directory}: a main job's workdir with no trained stage yet "
                              f"(stage1..3/{TRAIN_SUBDIR} are missing)")
    workdir, stage_dir = d, trained[0]
  elif os.path.exists(os.path.join(os.path.dirname(d), "phases.json")):
    workdir, stage_dir = os.path.dirname(d), d
    if not os.path.isdir(os.path.join(d, TRAIN_SUBDIR)):
      raise FileNotFoundError(f"{directory}: this stage has no checkpoints yet")
  else:
    raise FileNotFoundError(f"{directory}: neither a main job's workdir (phases.json) nor one of "
                            "its stage directories; a plain checkpoint loads with "
                            "unimodal_jax.load_pretrained")
  return workdir, stage_dir


def load(directory: str) -> "TrainedModel":
  """The trained model of a main job's workdir (its last trained stage) or of one stage
  directory; see this module's docstring."""
  from unimodal_jax.data import text_tokenizer
  from unimodal_jax.pipeline import dreamllm_parts, recipe
  from unimodal_jax import checkpoints
  workdir, stage_dir = _locate(directory)
  config = recipe.read_config(workdir)
  kind = str(config.get("model_kind", "illume"))
  codec = None
  if kind == "illume":
    codec, sp, model_cfg = recipe.finished_illume(config, workdir)
    model, params, formatter, model_config = recipe.trained_illume(config, stage_dir, model_cfg,
                                                                   sp, codec)
  elif kind == "dreamllm":
    sp = text_tokenizer.load(os.path.join(workdir, "data", "spm.model"))
    model, params, formatter, model_config = dreamllm_parts.trained(
        config, stage_dir, checkpoints.read_model_config(stage_dir), sp)
  else:
    raise ValueError(f"{workdir}: config.model_kind={kind!r}; expected one of {recipe.KINDS}")
  return TrainedModel(kind, config, stage_dir, model, params, formatter, sp, model_config, codec)


class TrainedModel:
  """What `load` returns: the model, its parameters and the job's settings, with the three
  tasks as methods. Attributes: kind ("illume" or "dreamllm"), config (the job's), stage_dir,
  model, params, formatter, sp (the text tokenizer), model_config, codec (ILLUME's image
  tokenizer and pixel decoder; None for DreamLLM)."""

  def __init__(self, kind, config, stage_dir, model, params, formatter, sp, model_config, codec):
    self.kind, self.config, self.stage_dir = kind, config, stage_dir
    self.model, self.params, self.formatter, self.sp = model, params, formatter, sp
    self.model_config, self.codec = model_config, codec
    self.batch = int(config.eval.batch)
    self.image_size = int(formatter.config.image_size)
    self.context = int(model_config.llm.max_seq_len)
    self._draw = None

  def __repr__(self):
    return (f"TrainedModel({self.kind}, {self.stage_dir}, {self.model_config.num_params():,} "
            f"params, {self.image_size} px images)")

  # ------------------------------------------------------------------------------ inputs

  def _image_png(self, image, where: str) -> bytes:
    """An input image as the PNG bytes of a uint8 [size, size, 3] array."""
    from PIL import Image
    from unimodal_jax.data import images as images_lib
    from unimodal_jax.data.worlds import shapes
    if isinstance(image, Image.Image):
      array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{where}: a {image.dtype} array of shape {image.shape}; expected "
                         "uint8 [H, W, 3] (0-255 RGB) or a PIL image")
      array = image
    else:
      raise TypeError(f"{where}: a {type(image).__name__}; expected a PIL image or a uint8 "
                      "[H, W, 3] numpy array")
    png = shapes.encode_png(array)
    if array.shape[:2] != (self.image_size, self.image_size):
      png = shapes.encode_png(images_lib.decode_resize(png, self.image_size, where=where))
    return png

  @staticmethod
  def _texts(texts, what: str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"{what} {i}: a {type(t).__name__}; expected a string")
    return texts

  @staticmethod
  def _images(images) -> list:
    return [images] if not isinstance(images, (list, tuple)) else list(images)

  def _check_length(self, prompts, extra: int, what: str) -> None:
    """Each prompt's tokens plus the `extra` it generates must fit the model's context."""
    for i, (tokens, _) in enumerate(prompts):
      if len(tokens) + extra > self.context:
        raise ValueError(f"{what} {i} takes {len(tokens)} tokens and its output {extra} more: "
                         f"{len(tokens) + extra} > the model's context of {self.context}")

  def _cut(self, make, what: str):
    """prompt_of's result, with the formatter's Skip (a prompt too long to format) as a named
    error."""
    from unimodal_jax.data.formatting import Skip
    try:
      return make()
    except Skip as e:
      raise ValueError(f"{what}: {e}") from None

  # ------------------------------------------------------------------------------ tasks

  def _drawer(self):
    """The job's own drawer, with its evaluation's sampling settings."""
    if self._draw is None:
      from unimodal_jax.pipeline import evaluate, recipe
      e = self.config.eval
      if self.kind == "illume":
        self._draw = evaluate.CodeDrawer(self.model, self.params, self.formatter, self.codec,
                                         evaluate.ImageSampling(**recipe.image_sampling(e)),
                                         self.batch)
      else:
        self._draw = evaluate.DreamDrawer(self.model, self.params, self.formatter,
                                          steps=int(e.steps), guidance=float(e.guidance),
                                          batch=self.batch)
    return self._draw

  def _output_tokens(self) -> int:
    """The tokens drawing an image adds after the prompt (codes, or dream queries)."""
    return (self.codec.tokens_per_image if self.kind == "illume"
            else self.model_config.num_dream_queries) + 2

  def _to_pil(self, images) -> list:
    from PIL import Image
    return [Image.fromarray(np.asarray(im, np.uint8)) for im in images]

  def generate_image(self, prompts, seed: int = 0) -> list:
    """A PIL image for each text prompt."""
    from unimodal_jax.data.documents import Document, Segment
    from unimodal_jax.pipeline import evaluate
    prompts = self._texts(prompts, "prompt")
    draw = self._drawer()
    cut = [self._cut(lambda: evaluate.prompt_of(self.formatter, Document(
        f"prompt/{i}", "text_to_image", [Segment.of_text(p), draw.placeholder()])), f"prompt {i}")
        for i, p in enumerate(prompts)]
    self._check_length(cut, self._output_tokens(), "prompt")
    return self._to_pil(evaluate.draw_prompts(draw, self.formatter, prompts, seed))

  def generate_document(self, prompts, seed: int = 0, max_images: int = 4,
                        max_new_tokens: int = 96, temperature: float = 0.0, log=None) -> list:
    """An interleaved document for each text prompt: the model writes text (greedy unless
    `temperature` > 0, as the evaluation writes it) and places images where it chooses
    (sampling.generate_document). Returns [sampling.GeneratedDocument]: its `segments` (text,
    and images as PNG bytes) and why it stopped."""
    from unimodal_jax import sampling
    prompts = self._texts(prompts, "prompt")
    # BOS and the prompt, and at least one token written
    self._check_length([([self.formatter.vocab.bos_id] + self.sp.encode(p), None)
                        for p in prompts], 1, "prompt")
    return sampling.generate_document(
        self.model, self.params, self.formatter, self._drawer(), prompts, seed=seed,
        max_images=max_images, max_new_tokens=max_new_tokens, temperature=temperature, log=log)

  def answer(self, images, questions, max_new_tokens: int = 32) -> list[str]:
    """The model's greedy answer to each question about its image."""
    from unimodal_jax.pipeline import evaluate
    images, questions = self._images(images), self._texts(questions, "question")
    if len(images) != len(questions):
      raise ValueError(f"answer: {len(images)} images for {len(questions)} questions; pass one "
                       "image per question")
    cut = [self._cut(lambda: evaluate.answer_prompt(
        self.formatter, self._image_png(im, f"image {i}"), q), f"question {i}")
        for i, (im, q) in enumerate(zip(images, questions))]
    self._check_length(cut, max_new_tokens, "question")
    out = []
    for i in range(0, len(cut), self.batch):
      batch = evaluate.padded(cut[i:i + self.batch], self.image_size)
      out += [t.strip() for t in evaluate.answer_texts(self.model, self.params, self.formatter,
                                                       self.sp, batch, max_new_tokens)]
    return out

  def edit(self, images, instructions, seed: int = 0) -> list:
    """ILLUME: a PIL image for each image and edit instruction."""
    from unimodal_jax.pipeline import evaluate
    if self.kind != "illume":
      raise NotImplementedError(f"edit: {self.kind}'s main job does not train editing; "
                                "ILLUME's does")
    images, instructions = self._images(images), self._texts(instructions, "instruction")
    if len(images) != len(instructions):
      raise ValueError(f"edit: {len(images)} images for {len(instructions)} instructions")
    pngs = [self._image_png(im, f"image {i}") for i, im in enumerate(images)]
    # Prompt length: the image read, the instruction, and the codes written.
    cut = [self._cut(lambda: evaluate.answer_prompt(self.formatter, png, ins), f"instruction {i}")
           for i, (png, ins) in enumerate(zip(pngs, instructions))]
    self._check_length(cut, self._output_tokens(), "instruction")
    return self._to_pil(evaluate.draw_edits(self._drawer(), self.formatter, pngs, instructions,
                                            seed))


__all__ = ["load", "TrainedModel", "STAGES"]
