"""DreamLLM's main job end to end at micro size (experiments/tiny/dreamllm_shapes.py:micro): its
own first phase (a CLIP and the diffusion decoder trained here), the shared data, stage and
evaluation phases, a kill in a training stage resumed there, finished phases skipped, the
scores ILLUME's job reports; and a diffusion decoder paired with another CLIP refused by name."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "tiny", "dreamllm_shapes.py") + ":micro"


def _command(workdir):
  return [sys.executable, "-m", "unimodal_jax.pipeline", "--config=" + CONFIG,
          "--workdir=" + str(workdir)]


@pytest.mark.slow
def test_dreamllm_main_job_micro_runs_resumes_after_kill_and_reports(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(_command(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:  # kill it once stage 2 has started training
    seen.append(line)
    if "[4/6 stage2]" in line and "training" in line:
      time.sleep(3)
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
  assert set(json.load(open(tmp_path / "phases.json"))) == {"parts", "data", "stage1"}
  assert any("initialized unet from" in line for line in seen)  # the pretrained decoder

  out = subprocess.run(_command(tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  for name in ("parts", "data", "stage1"):
    assert f"{name} done earlier" in out.stdout
  results = json.load(open(tmp_path / "results.json"))
  assert results["model_kind"] == "dreamllm"
  und, gen = results["understanding"], results["generation"]
  assert set(und) >= {"pope_random", "pope_popular", "pope_adversarial", "counting", "color",
                      "position", "pope_overall"}
  assert set(gen) >= {"single_object", "two_object", "counting", "colors", "position",
                      "color_attr", "overall", "decoder_ceiling"}
  assert "overall" in gen["decoder_ceiling"]  # the decoder's own text-to-image score
  assert all(0.0 <= v <= 1.0 for v in list(und.values()) + list(gen.values())
             if isinstance(v, float))
  assert set(results["phase_seconds"]) == {"parts", "data", "stage1", "stage2", "stage3"}
  assert (tmp_path / "results.md").read_text().startswith("# DreamLLM on the shapes world")
  assert (tmp_path / "samples.png").stat().st_size > 1000
  stage2 = json.load(open(tmp_path / "stage2" / "results.json"))
  assert stage2["status"] == "completed"
  # Stage 2 logged both losses; the diffusion one drew images.
  assert {"loss/lm", "loss/diffusion", "drawn_images"} <= set(stage2["train"])

  # The decoder learned this CLIP's text states; a retrained CLIP is refused, naming both.
  from unimodal_jax import checkpoints
  from unimodal_jax.pipeline import dreamllm_parts
  clip_dir, decoder_dir = tmp_path / "parts" / "clip", tmp_path / "parts" / "diffusion_decoder"
  dreamllm_parts.check_pair(str(clip_dir), str(decoder_dir))  # the pair trained together
  params, config = checkpoints.restore_params(str(clip_dir))
  other = tmp_path / "other_clip"
  checkpoints.save_pretrained(str(other), jax.tree.map(lambda x: np.asarray(x) + 1e-3, params),
                              config)
  with pytest.raises(ValueError, match="another CLIP"):
    dreamllm_parts.check_pair(str(other), str(decoder_dir))
  shutil.rmtree(other)

  # unimodal_jax.load: the same calls as ILLUME's, drawn through the dream queries; no editing.
  import unimodal_jax
  from unimodal_jax.data.worlds import shapes
  model = unimodal_jax.load(str(tmp_path))
  assert model.kind == "dreamllm" and model.codec is None
  size = model.model_config.dream_image_size
  drawn = model.generate_image(["a photo of a red circle", "a photo of two squares"], seed=1)
  assert [im.size for im in drawn] == [(size, size)] * 2
  assert np.array_equal(np.asarray(model.generate_image(["a photo of a red circle"], seed=1)[0]),
                        np.asarray(drawn[0]))
  doc = shapes.make_document(1, 0, "conversation", size=model.image_size)
  answers = model.answer([shapes.decode_image(doc.segments[0].image)] * 2,
                         [doc.segments[1].text, "How many circles are there?"])
  assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
  with pytest.raises(NotImplementedError, match="does not train editing"):
    model.edit(drawn[:1], ["make it blue"])
  # Stories in stage 2 (interleaved generative pretraining); the evaluation's documents.
  stage2_config = json.load(open(tmp_path / "phases.json"))["stage2"]["config"]
  assert '"story": {"path": "<workdir>/data/story"' in stage2_config
  doc = results["interleaved"]
  assert doc["documents"] == 4 and 0.0 <= doc["consistency"] <= 1.0
  assert doc["reference_images_per_document"] == 2.0
  assert (tmp_path / "benchmarks" / "interleaved" / "00" / "document.html").exists()
  # python -m unimodal_jax.generate: a document the model writes, as a page and JSON
  out = tmp_path / "generated"
  proc = subprocess.run(
      [sys.executable, "-m", "unimodal_jax.generate", f"--workdir={tmp_path}", f"--out={out}",
       "--prompt=This picture shows a red circle.", "--max_images=2", "--max_new_tokens=16"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((out / "document.json").read_text())
  assert record["model"] == "dreamllm" and record["segments"][0] == {
      "type": "text", "text": "This picture shows a red circle.", "source": "prompt"}
  files = [s["file"] for s in record["segments"] if s["type"] == "image"]
  assert len(files) <= 2 and all((out / f).exists() for f in files)
  assert 'class="prompt">This picture shows a red circle.' in (out / "document.html").read_text()
