"""The tokenizer experiment end to end (micro variants, shapes and digits): CLIP encoder,
semantic tokenizer, pixel decoder, pixel VQ baseline, judged reconstructions."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config: str, workdir, *flags):
  proc = subprocess.run(
      [sys.executable, "-m", "unimodal_jax.train.tokenizer",
       "--config=" + os.path.join(REPO, "experiments", "tiny", config) + ":micro",
       f"--workdir={workdir}", *flags], capture_output=True, text=True, cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text())


def test_tokenizer_experiment_micro(tmp_path):
  results = _run("tokenizer_shapes.py", tmp_path)
  assert results["world"] == "shapes"
  semantic, baseline = results["semantic_tokenizer"], results["pixel_vq_baseline"]
  assert results["originals_judge_same_objects"] == 1.0  # the judge reads clean renders
  assert semantic["tokens_per_image"] == 16 and baseline["tokens_per_image"] == 64
  assert 0 < semantic["codebook_usage"] <= 1 and -1 <= semantic["feature_cosine"] <= 1
  grid = np.asarray(Image.open(tmp_path / "samples.png"))
  assert grid.shape == (3 * 32 * 2, 12 * 32 * 2, 3)
  for phase in ("clip", "tokenizer", "pixel_decoder"):
    assert os.listdir(tmp_path / phase), phase


def test_digits_world_reads_its_scans_and_judges_them(tmp_path):
  """The digits counterpart (its own micro CLIP): the judge reads the clean held-out renders,
  and the reconstructions get a score in [0, 1] under the digits key."""
  results = _run("tokenizer_digits.py", tmp_path, "--config.baseline_train.steps=0")
  assert results["world"] == "digits" and results["eval_images"] == 24
  assert results["originals_judge_digit_accuracy"] >= 0.9
  assert 0.0 <= results["semantic_tokenizer"]["judge_digit_accuracy"] <= 1.0
  assert "judge_same_objects" not in results["semantic_tokenizer"]


def test_unknown_world_is_named_in_the_error():
  from unimodal_jax.train import tokenizer
  with pytest.raises(ValueError, match="config.data.world='mnist'; expected 'shapes' or"):
    tokenizer._World(ml_collections.ConfigDict(dict(world="mnist")), 32)


def test_image_tokens_per_experiment_follow_the_clip_patch_size():
  """The tokenizer experiment reads 4 px patches (64 tokens per image: shapes survive the
  quantizer); the main job and the digits experiment keep 8 px patches (16 tokens)."""
  import importlib
  clip_shapes = importlib.import_module("experiments.tiny.clip_shapes")

  def tokens(tokenizer_config):
    clip = clip_shapes.get_config(tokenizer_config.encoder.clip_variant or None).model.vision
    return (clip.image_size // clip.patch_size) ** 2

  configs = {name: importlib.import_module(f"experiments.tiny.{name}").get_config()
             for name in ("tokenizer_shapes", "tokenizer_digits", "illume_shapes")}
  assert tokens(configs["tokenizer_shapes"]) == 64
  assert tokens(configs["tokenizer_digits"]) == 16
  assert tokens(configs["illume_shapes"].tokenizer) == 16
  assert configs["tokenizer_shapes"].tokenizer.codebook_size == 2048
  assert configs["illume_shapes"].tokenizer.tokenizer.codebook_size == 512
  with pytest.raises(ValueError, match="unknown variant 'patch2'"):
    clip_shapes.get_config("patch2")


def test_a_phase_retrained_after_a_config_change_is_saved_over_the_stale_one(tmp_path):
  """A phase saved with another config is moved aside and the retrained one is what loads
  (orbax would otherwise skip the save of an existing step and the stale model would be read)."""
  from unimodal_jax import checkpoints
  from unimodal_jax.train import tokenizer
  phase = str(tmp_path / "tokenizer")
  tokenizer._save(phase, {"w": np.zeros(3, np.float32)}, {"code_dim": 16})
  logs = []
  assert tokenizer._load_phase(phase, {"code_dim": 32}, logs.append) is None
  assert "moved it to" in logs[0] and (tmp_path / "tokenizer.stale-1").is_dir()
  tokenizer._save(phase, {"w": np.ones(3, np.float32)}, {"code_dim": 32})
  loaded = tokenizer._load_phase(phase, {"code_dim": 32}, logs.append)
  np.testing.assert_array_equal(loaded["w"], np.ones(3, np.float32))
  # Writing a step the directory holds already is an error, not a silent no-op.
  with pytest.raises(FileExistsError, match="was not written"):
    checkpoints.save_pretrained(phase, {"w": np.full(3, 2.0, np.float32)},
                                tokenizer._ConfigDict({"code_dim": 32}))
  np.testing.assert_array_equal(tokenizer._load_phase(phase, {"code_dim": 32}, logs.append)["w"],
                                np.ones(3, np.float32))
