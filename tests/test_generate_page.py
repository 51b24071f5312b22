"""python -m unimodal_jax.generate's output for people: the page shows every segment in reading
order, the prompt's apart from the model's, with the images it saved, and the JSON names them."""
import json
import re

import numpy as np
import pytest

from unimodal_jax import generate
from unimodal_jax.data.documents import Segment
from unimodal_jax.data.worlds import shapes


def test_the_page_and_json_hold_the_segments_in_order(tmp_path):
  red = np.zeros((8, 8, 3), np.uint8)
  red[..., 0] = 255
  segments = [Segment.of_text("This picture shows <a red circle> & more."),
              Segment.of_image(shapes.encode_png(red)), Segment.of_text("Now, paint it blue."),
              Segment.of_image(shapes.encode_png(red[::-1]))]
  record = generate.write(str(tmp_path), "A document", segments,
                          ["prompt", "model", "model", "model"],
                          {"task": "document", "prompt": segments[0].text, "model": "illume",
                           "stop": "eos", "settings": {"seed": 0}})
  saved = json.loads((tmp_path / "document.json").read_text())
  assert saved == record
  assert saved["segments"] == [
      {"type": "text", "text": segments[0].text, "source": "prompt"},
      {"type": "image", "file": "image_0.png", "source": "model"},
      {"type": "text", "text": "Now, paint it blue.", "source": "model"},
      {"type": "image", "file": "image_1.png", "source": "model"}]
  assert np.array_equal(shapes.decode_image((tmp_path / "image_0.png").read_bytes()), red)
  page = (tmp_path / "document.html").read_text()
  # in reading order; the text escaped, never markup
  order = [page.index(s) for s in ("This picture shows &lt;a red circle&gt; &amp; more.",
                                    'src="image_0.png"', "Now, paint it blue.",
                                    'src="image_1.png"')]
  assert order == sorted(order) and "<a red circle>" not in page
  assert re.search(r'<p class="prompt">This picture', page)
  assert re.search(r'<figure class="model"><img src="image_0.png"', page)


def test_bad_requests_are_named_before_loading_anything(tmp_path):
  with pytest.raises(ValueError, match="--task='draw'"):
    generate.run(str(tmp_path), "draw", "x", str(tmp_path / "out"))
  with pytest.raises(ValueError, match="--task=answer needs --image"):
    generate.run(str(tmp_path), "answer", "x", str(tmp_path / "out"))
  with pytest.raises(ValueError, match="takes no --image"):
    generate.run(str(tmp_path), "document", "x", str(tmp_path / "out"), image="a.png")
  with pytest.raises(FileNotFoundError, match="neither a main job's workdir"):
    generate.run(str(tmp_path), "document", "x", str(tmp_path / "out"))
