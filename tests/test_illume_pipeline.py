"""The main job end to end at micro size: every phase runs, a kill in the middle of a training
phase resumes there, finished phases are skipped, and the outputs are written."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "tiny", "illume_shapes.py") + ":micro"


def _command(workdir):
  return [sys.executable, "-m", "unimodal_jax.pipeline", "--config=" + CONFIG,
          "--workdir=" + str(workdir), "--config.self_assessment.enabled=True"]


@pytest.mark.slow
def test_pipeline_micro_runs_resumes_after_kill_and_reports(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(_command(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:  # kill it once stage 2 has started training
    seen.append(line)
    if "[4/7 stage2]" in line and "training" in line:
      time.sleep(3)
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
  phases = json.load(open(tmp_path / "phases.json"))
  assert set(phases) == {"tokenizer", "data", "stage1"}

  out = subprocess.run(_command(tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  for name in ("tokenizer", "data", "stage1"):
    assert f"{name} done earlier" in out.stdout
  assert "=== [7/7] eval" in out.stdout
  results = json.load(open(tmp_path / "results.json"))
  und, gen, edit = results["understanding"], results["generation"], results["editing"]
  assert set(und) >= {"pope_random", "pope_popular", "pope_adversarial", "counting", "color",
                      "position", "pope_overall"}
  assert set(gen) >= {"single_object", "two_object", "counting", "colors", "position",
                      "color_attr", "overall"}
  assert all(0.0 <= v <= 1.0 for v in list(und.values()) + list(gen.values())
             if isinstance(v, float))
  assert "overall" in edit
  # Self-assessment: the phase wrote dialogues from prompts of its own seed, stage 3 read them,
  # and the evaluation asked the model to assess its held-out drawings.
  from unimodal_jax.data import shards
  docs = list(shards.read_documents(str(tmp_path / "self_assessment")))
  assert docs and all(d.id.startswith("shapes/self_assessment/2/") for d in docs)
  assert "drawing 12 prompts on mesh {'data': 8," in out.stdout  # the test's 8 CPU devices
  made = json.load(open(tmp_path / "phases.json"))["self_assessment"]["figures"]
  assert made["drawings"] == 12 and made["documents"] == len(docs)
  turns = [d.metadata["turns"] for d in docs]
  assert not made["balanced"] or turns.count(1) == turns.count(2)  # balanced: as many of each
  stage3_config = json.load(open(tmp_path / "phases.json"))["stage3"]["config"]
  assert '"self_assessment": {"path": "<workdir>/self_assessment"' in stage3_config
  assessed = results["self_assessment"]
  assert assessed["images"] == 12 and 0.0 <= assessed["agreement"] <= 1.0
  _self_assess_tool_takes_an_external_scorer(tmp_path, env)
  _loaded_for_users(tmp_path, env)
  assert set(results["phase_seconds"]) == {"tokenizer", "data", "stage1", "stage2",
                                          "self_assessment", "stage3"}
  assert (tmp_path / "results.md").read_text().startswith("# ILLUME on the shapes world")
  assert (tmp_path / "samples.png").stat().st_size > 1000
  # The stage-2 run resumed from its checkpoint rather than starting over.
  stage2 = json.load(open(tmp_path / "stage2" / "results.json"))
  assert stage2["status"] == "completed"

  again = subprocess.run(_command(tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0 and again.stdout.count("done earlier") == 7

  # A copy of the workdir elsewhere (a pod's workdir fetched to a laptop) is still finished.
  moved = tmp_path.parent / (tmp_path.name + "-moved")
  shutil.copytree(tmp_path, moved)
  there = subprocess.run(_command(moved), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
  assert there.returncode == 0 and there.stdout.count("done earlier") == 7, there.stdout[-3000:]
  shutil.rmtree(moved)

  # A finished phase whose output was deleted runs again, and so does every phase after it.
  shutil.rmtree(tmp_path / "stage3")
  rerun = subprocess.run(_command(tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  assert "records stage3 as done but" in rerun.stdout
  assert rerun.stdout.count("done earlier") == 5  # tokenizer ... stage2, self_assessment
  assert "=== [6/7] stage3 (" in rerun.stdout and "=== [7/7] eval (" in rerun.stdout
  # The training loop's progress lines belong to the one display, prefixed with their phase.
  assert "[6/7 stage3] step     20/20 | loss" in rerun.stdout
  assert json.load(open(tmp_path / "stage3" / "results.json"))["status"] == "completed"


def _self_assess_tool_takes_an_external_scorer(workdir, env):
  """tools/self_assess.py on the finished micro workdir: drawings out for a scorer, its JSON
  lines back in as dialogues; a line that is not an assessment of its prompt is named."""
  from unimodal_jax.alignment import self_assessment
  from unimodal_jax.data import shards
  from unimodal_jax.data.worlds import geneval
  prompts = geneval.geneval_prompts(5, 1)[:3]
  (workdir / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
  tool = [sys.executable, "tools/self_assess.py", "--config=" + CONFIG,
          "--workdir=" + str(workdir)]
  drawn = subprocess.run(tool + ["--prompts=" + str(workdir / "p.jsonl"),
                                 "--images_out=" + str(workdir / "drawn")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert drawn.returncode == 0, drawn.stderr[-3000:]
  assert sorted(os.listdir(workdir / "drawn")) == ["00000.png", "00001.png", "00002.png",
                                                   "prompts.jsonl"]
  verdicts = [{k: "no" for k in self_assessment.aspects_asked(p["spec"])} for p in prompts]
  verdicts[0] = {k: "yes" for k in verdicts[0]}
  scorer = workdir / "a.jsonl"
  scorer.write_text("".join(json.dumps({"assessment": v}) + "\n" for v in verdicts))
  back = subprocess.run(tool + ["--images=" + str(workdir / "drawn"), "--assessments=" +
                                str(scorer), "--out=" + str(workdir / "ext")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert back.returncode == 0, back.stderr[-3000:]
  assert json.loads(back.stdout.strip().splitlines()[-1])["two_turn"] == 2
  docs = list(shards.read_documents(str(workdir / "ext")))
  assert [d.metadata["assessment"] for d in docs] == verdicts
  scorer.write_text("".join(json.dumps({"assessment": {"object": "maybe"}}) + "\n"
                            for _ in prompts))
  bad = subprocess.run(tool + ["--images=" + str(workdir / "drawn"), "--assessments=" +
                               str(scorer), "--out=" + str(workdir / "ext2")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "a.jsonl, line 1: {'object': 'maybe'} is not an assessment" in (
      bad.stderr)
  # As on a pod: two processes (8 devices each) draw their shares and the first writes. The
  # drawings are the one process's, byte for byte.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      tool + ["--prompts=" + str(workdir / "p.jsonl"), "--images_out=" + str(workdir / "drawn2"),
              "--num_processes=2", f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert '"images"' in outs[0][0] and '"images"' not in outs[1][0], "the first one reports"
  for name in sorted(os.listdir(workdir / "drawn")):
    assert (workdir / "drawn2" / name).read_bytes() == (workdir / "drawn" / name).read_bytes()


def _loaded_for_users(workdir, env):
  """unimodal_jax.load on the finished micro workdir: it answers as the evaluation does, draws
  and edits reproducibly, names bad input; the quickstart notebook runs on it; POPE's and
  GenEval's commands answer and draw through it."""
  import nbclient
  import nbformat
  import numpy as np
  from PIL import Image
  import unimodal_jax
  from unimodal_jax.data.worlds import shapes
  from unimodal_jax.eval import jsonl
  from unimodal_jax.pipeline import evaluate
  model = unimodal_jax.load(str(workdir))
  assert model.kind == "illume" and model.stage_dir == str(workdir / "stage3")
  assert unimodal_jax.load(str(workdir / "stage2")).stage_dir == str(workdir / "stage2")
  # the job's model embeds each written code's place among the image's codes
  assert model.model.config.code_positions == model.codec.tokens_per_image
  assert model.params["code_position_embed"]["embedding"].shape[0] == model.codec.tokens_per_image
  # The evaluation's own answers to its first six held-out questions (one of each kind), asked
  # again through the facade with the same images: the same prompt layout gives the same text.
  seed, size = int(model.config.data.eval_seed), model.image_size
  und = evaluate.understanding(model.model, model.params, model.formatter, model.sp, seed, 1, 1,
                               log=lambda *a: None)
  docs = [shapes.make_document(seed, i, "conversation", size=size) for i in range(6)]
  scenes = [shapes.decode_image(d.segments[0].image) for d in docs]
  questions = [d.segments[1].text for d in docs]
  assert [e["question"] for e in und["examples"]] == questions
  assert [a.lower() for a in model.answer(scenes, questions)] == [
      e["model"] for e in und["examples"]]
  assert model.answer([Image.fromarray(scenes[0])], questions[:1]) == model.answer(
      scenes[:1], questions[:1])  # PIL or numpy alike
  drawn = model.generate_image(["a photo of a red circle", "a photo of two squares"], seed=3)
  assert [im.size for im in drawn] == [(size, size)] * 2
  again = model.generate_image(["a photo of a red circle"], seed=3)
  assert np.array_equal(np.asarray(again[0]), np.asarray(drawn[0]))
  assert len(model.edit(scenes[:2], ["make the circle blue", "remove the square"])) == 2
  with pytest.raises(ValueError, match="float32 array"):
    model.answer([scenes[0].astype(np.float32)], ["q"])
  with pytest.raises(ValueError, match="the model's context of"):
    model.generate_image(["circle " * 400])
  # python -m unimodal_jax.generate: a document (each image's codes written, then read), an
  # answer about an image file as model.answer gives it, and a missing image named.
  results = json.load(open(workdir / "results.json"))
  assert results["interleaved"]["documents"] == 4
  gen = lambda *args: subprocess.run([sys.executable, "-m", "unimodal_jax.generate",
                                      f"--workdir={workdir}", *args], cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=600)
  proc = gen("--prompt=This picture shows a red circle.", f"--out={workdir / 'doc'}",
             "--max_images=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((workdir / "doc" / "document.json").read_text())
  assert record["model"] == "illume" and record["stop"] in ("eos", "max_new_tokens",
                                                           "max_images", "context")
  assert all((workdir / "doc" / s["file"]).exists() for s in record["segments"]
             if s["type"] == "image")
  Image.fromarray(scenes[0]).save(workdir / "scene.png")
  proc = gen("--task=answer", f"--image={workdir / 'scene.png'}", f"--prompt={questions[0]}",
             f"--out={workdir / 'answered'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  answered = json.loads((workdir / "answered" / "document.json").read_text())["segments"]
  assert [s["type"] for s in answered] == ["image", "text", "text"]
  assert answered[2]["text"] == model.answer(scenes[:1], questions[:1])[0]
  proc = gen("--task=edit", "--image=/nonexistent/scene.png", "--prompt=make it blue",
             f"--out={workdir / 'edited'}")
  assert proc.returncode != 0 and "/nonexistent/scene.png: cannot read image" in proc.stderr
  # The notebook, on this workdir.
  nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  os.environ["QUICKSTART_WORKDIR"] = str(workdir)
  try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": REPO}}).execute()
  finally:
    del os.environ["QUICKSTART_WORKDIR"]
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # drawn, scene, edited
  assert any("How many circles are there? -> '" in o.get("text", "") for o in outputs)
  # POPE: the model's answers written in the official format, then scored.
  images = workdir / "pope_images"
  images.mkdir()
  for i, s in enumerate(scenes[:3]):
    Image.fromarray(s).save(images / f"{i}.png")
  jsonl.write(str(workdir / "pope_q.jsonl"), [
      {"question_id": i, "image": f"{i}.png", "text": questions[i],
       "label": docs[i].metadata["answer"]} for i in range(3)])  # the existence questions
  pope_cmd = subprocess.run(
      [sys.executable, "-m", "unimodal_jax.eval.pope", f"--questions={workdir / 'pope_q.jsonl'}",
       f"--answers={workdir / 'pope_a.jsonl'}", f"--workdir={workdir}", f"--image_dir={images}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert pope_cmd.returncode == 0, pope_cmd.stderr[-3000:]
  written = [r for _, r in jsonl.read(str(workdir / "pope_a.jsonl"))]
  assert [r["answer"] for r in written] == model.answer(scenes[:3], questions[:3])
  assert json.loads(pope_cmd.stdout.strip().splitlines()[-1])["questions"] == 3
  # GenEval: drawn into the official layout and scored.
  jsonl.write(str(workdir / "meta.jsonl"), [
      {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
       "prompt": "a photo of a circle"},
      {"tag": "counting", "include": [{"class": "square", "count": 2}],
       "exclude": [{"class": "square", "count": 3}], "prompt": "a photo of two squares"}])
  gen_cmd = subprocess.run(
      [sys.executable, "-m", "unimodal_jax.eval.geneval", f"--metadata={workdir / 'meta.jsonl'}",
       f"--workdir={workdir}", f"--out={workdir / 'geneval'}", "--samples=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert gen_cmd.returncode == 0, gen_cmd.stderr[-3000:]
  assert sorted(os.listdir(workdir / "geneval" / "00001" / "samples")) == ["0000.png", "0001.png"]
  scores = json.loads(gen_cmd.stdout.strip().splitlines()[-1])
  assert scores["images"] == 4 and set(scores) >= {"single_object", "counting", "overall"}


def test_a_workdir_of_another_run_identity_is_moved_aside(tmp_path):
  """A run killed mid-way resumes from its checkpoints only if they belong to the same run (the
  main job's stages and the tokenizer's phases pass their config's fingerprint as the identity);
  otherwise (the config changed between runs) they are kept aside, renamed, and training starts
  from an empty directory. Without an identity (the command line) a workdir is always resumed."""
  from unimodal_jax.train import fit
  logs = []
  stage = tmp_path / "stage1"
  fit._claim(str(stage), "fp-a", logs.append)
  (stage / "checkpoints").mkdir()
  (stage / "checkpoints" / "marker").write_text("a")
  fit._claim(str(stage), "fp-a", logs.append)  # same config: resume in place
  assert (stage / "checkpoints" / "marker").read_text() == "a" and not logs
  fit._claim(str(stage), None, logs.append)  # no identity: resume in place
  assert (stage / "checkpoints" / "marker").read_text() == "a" and not logs
  fit._claim(str(stage), "fp-b", logs.append)  # another config: moved aside
  assert (tmp_path / "stage1.stale-1" / "checkpoints" / "marker").read_text() == "a"
  assert sorted(os.listdir(stage)) == [fit.IDENTITY_FILE]
  assert "moved it to" in logs[0] and "stage1.stale-1" in logs[0]
  (stage / "x").write_text("b")
  fit._claim(str(stage), "fp-c", logs.append)  # a second change: a new name
  assert (tmp_path / "stage1.stale-2" / "x").read_text() == "b"


@pytest.mark.slow
def test_main_job_runs_on_the_shipped_parts(tmp_path):
  """The default main job's tokenizer phase loads the parts shipped in the repository instead of
  training them (here with the `:micro` stages): the phase records the shipped figures, every
  later phase runs on the shipped codec (64 tokens per image), and the stages start from the
  shipped CLIP."""
  from experiments.tiny import illume_shapes
  from unimodal_jax import pretrained
  from unimodal_jax.pipeline import recipe
  config = illume_shapes.get_config("micro")
  full = illume_shapes.get_config()
  config.tokenizer, config.pretrained = full.tokenizer, full.pretrained
  logs = []
  results = recipe.run(config, str(tmp_path), log=logs.append)
  assert any("using the parts shipped in" in line for line in logs)
  assert not (tmp_path / "tokenizer").exists()  # nothing trained
  phases = json.load(open(tmp_path / "phases.json"))
  manifest = pretrained.read_manifest(pretrained.directory_of(full.pretrained))
  assert phases["tokenizer"]["figures"]["semantic_tokenizer"] == manifest["figures"][
      "semantic_tokenizer"]
  assert results["model"]["tokens_per_image"] == 64
  assert results["model"]["image_codes"] == full.tokenizer.tokenizer.codebook_size


def test_an_unknown_code_embedding_init_is_named_before_any_phase(tmp_path):
  from experiments.tiny import illume_shapes
  from unimodal_jax.pipeline import recipe
  config = illume_shapes.get_config("micro")
  config.code_embedding_init = "bogus"
  with pytest.raises(ValueError, match="code_embedding_init='bogus'"):
    recipe.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_fingerprints_name_the_workdir_and_repository_not_their_paths():
  """Phases recorded in one place are recognized in another: absolute paths inside the workdir
  or the repository become placeholders, whole path components only, nested fingerprints
  (escaped JSON) included; a workdir inside the repository is named as the workdir."""
  from unimodal_jax.pipeline import recipe
  places = {"/runs/w": "<workdir>", "/src/repo": "<repo>", "/src/repo/out/a": "<workdir>"}
  inner = recipe._fingerprint({"data": "/runs/w/data/caption", "parts": "/src/repo/shipped"})
  outer = recipe._fingerprint([{"init": "/runs/w/stage1", "other": "/runs/w2/x",
                                "here": "/src/repo/out/a/stage2"}, inner], places)
  assert "/runs/w/" not in outer and "/runs/w2/x" in outer  # /runs/w is not /runs/w2
  assert '"<workdir>/stage1"' in outer and '"<workdir>/stage2"' in outer
  assert recipe._relocated(inner, places) == recipe._fingerprint(
      {"data": "/runs/w/data/caption", "parts": "/src/repo/shipped"}, places)
  assert "<workdir>/data/caption" in outer and "<repo>/shipped" in outer
  moved = {"/elsewhere/w": "<workdir>", "/other/clone": "<repo>"}
  assert outer == recipe._fingerprint(
      [{"init": "/elsewhere/w/stage1", "other": "/runs/w2/x", "here": "/elsewhere/w/stage2"},
       recipe._fingerprint({"data": "/elsewhere/w/data/caption",
                            "parts": "/other/clone/shipped"})], moved)
