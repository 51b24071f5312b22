"""Generate with a trained ILLUME or DreamLLM, for people: a page to read in a browser.

    python -m unimodal_jax.generate --workdir=DIR --prompt="This picture shows a red circle." \
        --out=OUT                                   # a free-form interleaved document
    python -m unimodal_jax.generate --workdir=DIR --task=text_to_image --prompt="two blue squares" \
        --out=OUT
    python -m unimodal_jax.generate --workdir=DIR --task=answer --image=scene.png \
        --prompt="How many circles are there?" --out=OUT
    python -m unimodal_jax.generate --workdir=DIR --task=edit --image=scene.png \
        --prompt="make the circle blue" --out=OUT   # ILLUME's job only

DIR is a main job's workdir (its last trained stage) or one of its stage directories. Writes
OUT/document.html (the text and images as a person reads them), OUT/document.json
({"segments": [...]}, each segment {"type": "text", "text": ...} or {"type": "image", "file":
..., "source": "prompt" | "model"}, with the task, the prompt, why the document ended and the
settings) and the images as PNGs. Sampling settings not given here are the job's evaluation's.
"""
from __future__ import annotations

import html
import json
import os

TASKS = ("document", "text_to_image", "answer", "edit")


def segments_json(segments, sources) -> list[dict]:
  """document.json's segments: the texts, and each image's file name (image_{i}.png)."""
  out, n = [], 0
  for seg, source in zip(segments, sources, strict=True):
    if seg.type == "text":
      out.append({"type": "text", "text": seg.text, "source": source})
    else:
      out.append({"type": "image", "file": f"image_{n}.png", "source": source})
      n += 1
  return out


def page(title: str, record: dict) -> str:
  """document.html: the segments in reading order, the prompt's apart from the model's."""
  parts, verdicts = [], iter(record.get("verdicts", []))  # the evaluation's judge, if any
  for seg in record["segments"]:
    who = "prompt" if seg["source"] == "prompt" else "model"
    if seg["type"] == "text":
      parts.append(f'<p class="{who}">{html.escape(seg["text"])}</p>')
    else:
      caption = seg["file"]
      verdict = next(verdicts, None)
      if verdict:
        caption += (f' · judge: {"consistent" if verdict["consistent"] else "inconsistent"} '
                    f'with the sentence before ({verdict["reason"]})')
      parts.append(f'<figure class="{who}"><img src="{html.escape(seg["file"])}" '
                   f'alt="{who} image"><figcaption>{html.escape(caption)}</figcaption>'
                   "</figure>")
  settings = ", ".join(f"{k}={v}" for k, v in record["settings"].items())
  return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 18px/1.5 Georgia, serif; max-width: 42em; margin: 2em auto; color: #222; }}
p.prompt {{ color: #666; font-style: italic; }}
p.prompt::before {{ content: "prompt: "; font-style: normal; color: #999; }}
figure {{ margin: 1em 0; }}
img {{ width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #ccc; }}
figure.prompt img {{ border-color: #999; border-style: dashed; }}
figcaption, footer {{ font: 12px monospace; color: #999; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{chr(10).join(parts)}
<footer>{html.escape(record["model"])} · task {html.escape(record["task"])} · ended by
{html.escape(record["stop"])} · {html.escape(settings)}</footer>
</body></html>
"""


def write(out_dir: str, title: str, segments, sources, record: dict) -> dict:
  """Write OUT/document.json, OUT/document.html and the images; returns the JSON record."""
  from PIL import Image
  import io
  os.makedirs(out_dir, exist_ok=True)
  record = dict(record, segments=segments_json(segments, sources))
  n = 0
  for seg in segments:
    if seg.type != "text":
      Image.open(io.BytesIO(seg.image)).convert("RGB").save(os.path.join(out_dir,
                                                                         f"image_{n}.png"))
      n += 1
  with open(os.path.join(out_dir, "document.json"), "w") as f:
    json.dump(record, f, indent=1)
  with open(os.path.join(out_dir, "document.html"), "w") as f:
    f.write(page(title, record))
  return record


def run(workdir: str, task: str, prompt: str, out_dir: str, image: str = "", seed: int = 0,
        max_images: int = 4, max_new_tokens: int = 96, temperature: float = 0.0,
        log=print) -> dict:
  """One generation (see the module docstring); returns what document.json holds."""
  import numpy as np
  import unimodal_jax
  from unimodal_jax.data import images as images_lib
  from unimodal_jax.data.documents import Segment
  from unimodal_jax.data.worlds.shapes import encode_png
  if task not in TASKS:
    raise ValueError(f"--task={task!r}; expected one of {TASKS}")
  if (task in ("answer", "edit")) != bool(image):
    raise ValueError(f"--task={task} " + ("needs --image=PATH" if not image else
                                          "takes no --image (answer and edit do)"))
  model = unimodal_jax.load(workdir)
  log(f"loaded {model!r}")
  settings = {"seed": seed}
  if task == "document":
    settings.update(max_images=max_images, max_new_tokens=max_new_tokens,
                    temperature=temperature)
    doc = model.generate_document([prompt], seed=seed, max_images=max_images,
                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                  log=log)[0]
    segments, stop = doc.segments, doc.stop
    sources = ["prompt"] + ["model"] * (len(segments) - 1)
  elif task == "text_to_image":
    drawn = model.generate_image([prompt], seed=seed)[0]
    segments = [Segment.of_text(prompt), Segment.of_image(encode_png(np.asarray(drawn)))]
    sources, stop = ["prompt", "model"], "image"
  else:
    scene = images_lib.read_rgb(image)
    given = Segment.of_image(encode_png(scene))
    if task == "answer":
      out = Segment.of_text(model.answer([scene], [prompt])[0])
    else:
      out = Segment.of_image(encode_png(np.asarray(model.edit([scene], [prompt], seed=seed)[0])))
    segments, sources, stop = [given, Segment.of_text(prompt), out], ["prompt"] * 2 + ["model"], (
        "answer" if task == "answer" else "image")
  record = {"task": task, "prompt": prompt, "model": model.kind, "stage_dir": model.stage_dir,
            "stop": stop, "settings": settings}
  title = {"document": "Interleaved document", "text_to_image": "Text to image",
           "answer": "Answer", "edit": "Edit"}[task]
  record = write(out_dir, f"{title} ({model.kind})", segments, sources, record)
  log(f"wrote {os.path.join(out_dir, 'document.html')}: "
      f"{sum(s['type'] == 'image' for s in record['segments'])} images, "
      f"{sum(s['type'] == 'text' for s in record['segments'])} texts, ended by {stop}")
  return record


def main(argv):
  from absl import flags, logging
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    run(f.workdir, f.task, f.prompt, f.out, f.image, f.seed, f.max_images, f.max_new_tokens,
        f.temperature, log=lambda *a: print(*a, flush=True))
  except (ValueError, FileNotFoundError, NotImplementedError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "a main job's workdir, or one of its stage directories")
  flags.DEFINE_string("prompt", None, "the text: a document's start, a prompt to draw, a "
                      "question (--task=answer) or an edit instruction (--task=edit)")
  flags.DEFINE_string("out", None, "output directory: document.html, document.json, PNGs")
  flags.DEFINE_enum("task", "document", TASKS, "document: free-form text and images; "
                    "text_to_image; answer and edit read --image")
  flags.DEFINE_string("image", "", "an image file (PNG or JPEG) for --task=answer or edit")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_integer("max_images", 4, "document: at most this many images")
  flags.DEFINE_integer("max_new_tokens", 96, "document: at most this many text tokens")
  flags.DEFINE_float("temperature", 0.0, "document: the text's sampling temperature (0: "
                     "greedy, as the evaluation writes)")
  flags.mark_flags_as_required(["workdir", "prompt", "out"])
  app.run(main)
