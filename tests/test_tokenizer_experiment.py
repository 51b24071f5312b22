"""The tokenizer experiment end to end (micro variant): CLIP encoder, semantic tokenizer, pixel
decoder, pixel VQ baseline, judged reconstructions."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tokenizer_experiment_micro(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "unimodal_jax.train.tokenizer",
       "--config=" + os.path.join(REPO, "experiments", "tiny", "tokenizer_shapes.py") + ":micro",
       f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  semantic, baseline = results["semantic_tokenizer"], results["pixel_vq_baseline"]
  assert results["originals_judge_same_objects"] == 1.0  # the judge reads clean renders
  assert semantic["tokens_per_image"] == 16 and baseline["tokens_per_image"] == 64
  assert 0 < semantic["codebook_usage"] <= 1 and -1 <= semantic["feature_cosine"] <= 1
  grid = np.asarray(Image.open(tmp_path / "samples.png"))
  assert grid.shape == (3 * 32 * 2, 12 * 32 * 2, 3)
  for phase in ("clip", "tokenizer", "pixel_decoder"):
    assert os.listdir(tmp_path / phase), phase
