"""The tokenizer experiment end to end (micro variants, shapes and digits): CLIP encoder,
semantic tokenizer, pixel decoder, pixel VQ baseline, judged reconstructions."""
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(config: str, workdir, *flags):
  return [sys.executable, "-m", "unimodal_jax.train.tokenizer",
          "--config=" + os.path.join(REPO, "experiments", "tiny", config) + ":micro",
          f"--workdir={workdir}", *flags]


def _run(config: str, workdir, *flags):
  proc = subprocess.run(_command(config, workdir, *flags), capture_output=True, text=True,
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
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


@pytest.mark.slow
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
  with pytest.raises(ValueError, match="config.data.world='mnist'; expected one of"):
    tokenizer._World(ml_collections.ConfigDict(dict(world="mnist")), 32)


def test_image_tokens_per_experiment_follow_the_clip_patch_size():
  """The tokenizer experiment and the main job read 4 px patches (64 tokens per image: shapes
  survive the quantizer); the digits experiment keeps 8 px patches (16 tokens)."""
  import importlib
  clip_shapes = importlib.import_module("experiments.tiny.clip_shapes")

  def tokens(tokenizer_config):
    clip = clip_shapes.get_config(tokenizer_config.encoder.clip_variant or None).model.vision
    return (clip.image_size // clip.patch_size) ** 2

  configs = {name: importlib.import_module(f"experiments.tiny.{name}").get_config()
             for name in ("tokenizer_shapes", "tokenizer_digits", "illume_shapes")}
  assert tokens(configs["tokenizer_shapes"]) == 64
  assert tokens(configs["tokenizer_digits"]) == 16
  assert tokens(configs["illume_shapes"].tokenizer) == 64
  assert configs["tokenizer_shapes"].tokenizer.codebook_size == 2048
  assert configs["illume_shapes"].tokenizer.tokenizer.codebook_size == 2048
  with pytest.raises(ValueError, match="unknown variant 'patch2'"):
    clip_shapes.get_config("patch2")


def test_writing_a_step_a_checkpoint_holds_already_is_an_error(tmp_path):
  """orbax skips the save of an existing step; unchecked, a stale model would be read back as
  if it were the new one."""
  from unimodal_jax import checkpoints
  from unimodal_jax.models import vit
  config = vit.VitConfig(image_size=8, patch_size=4, hidden_size=8, intermediate_size=16,
                         num_layers=1, num_heads=2)
  checkpoints.save_pretrained(str(tmp_path / "p"), {"w": np.zeros(3, np.float32)}, config)
  with pytest.raises(FileExistsError, match="was not written"):
    checkpoints.save_pretrained(str(tmp_path / "p"), {"w": np.ones(3, np.float32)}, config)
  np.testing.assert_array_equal(checkpoints.restore_params(str(tmp_path / "p"))[0]["w"],
                                np.zeros(3, np.float32))


@pytest.mark.slow
def test_a_tokenizer_phase_killed_mid_run_resumes_bit_identically(tmp_path):
  """SIGKILL while the semantic tokenizer trains; the same command again resumes it from its
  last checkpoint (train/fit.py) and ends with the very params of an uninterrupted run."""
  import jax
  from unimodal_jax import load_pretrained
  flags = ["--config.tokenizer_train.steps=200", "--config.tokenizer_train.checkpoint_every=20",
           "--config.pixel_train.steps=5", "--config.baseline_train.steps=0"]
  _run("tokenizer_shapes.py", tmp_path / "straight", *flags)
  reuse_clip = f"--config.encoder.clip_workdir={tmp_path / 'straight' / 'clip'}"
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command("tokenizer_shapes.py", killed, *flags, reuse_clip),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  deadline = time.time() + 300
  while (not os.path.isdir(killed / "tokenizer" / "checkpoints" / "40")
         and time.time() < deadline):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert not (killed / "tokenizer" / "results.json").exists(), "it finished before the kill"

  _run("tokenizer_shapes.py", killed, *flags, reuse_clip)
  for phase in ("tokenizer", "pixel_decoder"):
    _, straight = load_pretrained(str(tmp_path / "straight" / phase))
    _, resumed = load_pretrained(str(killed / phase))
    assert jax.tree.structure(straight) == jax.tree.structure(resumed)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Rerun with another tokenizer config: the tokenizer and the pixel decoder trained on its
  # output are moved aside and trained again; the new ones are what loads.
  proc = subprocess.run(_command("tokenizer_shapes.py", killed, *flags, reuse_clip,
                                 "--config.tokenizer.code_dim=8"),
                        capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "moved it to" in proc.stdout
  assert (killed / "tokenizer.stale-1").is_dir() and (killed / "pixel_decoder.stale-1").is_dir()
  model, _ = load_pretrained(str(killed / "tokenizer"))
  assert model.config.code_dim == 8


def test_save_pretrained_writes_a_scalar_host_param(tmp_path):
  """A 0-d host array (a CLIP's logit scale) is written 0-d: the streaming writer once made it
  1-d and the save failed."""
  from unimodal_jax import checkpoints
  from unimodal_jax.models import vit
  config = vit.VitConfig(image_size=8, patch_size=4, hidden_size=8, intermediate_size=16,
                         num_layers=1, num_heads=2)
  params = {"w": np.arange(3, dtype=np.float32), "scale": np.asarray(2.5, np.float32)}
  checkpoints.save_pretrained(str(tmp_path / "p"), params, config)
  restored, _ = checkpoints.restore_params(str(tmp_path / "p"))
  assert np.asarray(restored["scale"]).shape == () and float(restored["scale"]) == 2.5
  np.testing.assert_array_equal(np.asarray(restored["w"]), params["w"])
