"""Every tool explains its flags and fails with a named error on bad input."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("tool,flags", [
    ("tools/convert_hf.py", ["--hf_dir", "--out_dir", "--dtype", "--concurrent_gb"]),
    ("tools/export_hf.py", ["--ckpt", "--hf_dir", "--step", "--max_shard_gb"]),
])
def test_argparse_tools_help(tool, flags):
  proc = _run(tool, "--help")
  assert proc.returncode == 0
  for flag in flags:
    assert flag in proc.stdout


@pytest.mark.parametrize("args,flags", [
    (["tools/aot_compile.py", "--help"], ["--config", "--topology", "v5p-256", "per_chip_hbm"]),
    (["-m", "unimodal_jax.summary", "--help"], ["--config", "forward: run a forward pass"]),
    (["tools/self_assess.py", "--help"], ["--workdir", "--images_out", "--assessments"]),
    (["-m", "experiments.illume.table7", "--help"], ["--workdir", "--seeds"]),
])
def test_absl_tools_help(args, flags):
  proc = _run(*args)
  assert proc.returncode in (0, 1)  # absl exits 1 after --help
  for flag in flags:
    assert flag in proc.stdout


def test_convert_reports_missing_config(tmp_path):
  proc = _run("tools/convert_hf.py", "--hf_dir", str(tmp_path), "--out_dir", str(tmp_path / "o"))
  assert proc.returncode == 2 and "config.json not found" in proc.stderr


def test_export_reports_missing_checkpoint(tmp_path):
  proc = _run("tools/export_hf.py", "--ckpt", str(tmp_path / "nope"), "--hf_dir", str(tmp_path))
  assert proc.returncode != 0 and "no such checkpoint directory" in proc.stderr


def test_summary_runs_a_forward_pass():
  proc = _run("-m", "unimodal_jax.summary", "--config=experiments/tiny/lm.py")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "params      1.26M" in proc.stdout
  loss = float(proc.stdout.split("next-token loss on random tokens ")[1].split()[0])
  assert abs(loss - 7.625) < 0.3  # an untrained model is near-uniform over 2048 tokens


@pytest.mark.parametrize("config,kind,count", [
    ("experiments/tiny/lm.py:micro", "decoder", None),
    ("experiments/tiny/clip_shapes.py:micro", "clip", None),
    ("experiments/illume/stage2.py", "illume", "7.21B"),
])
def test_summary_takes_any_model_kind(config, kind, count):
  """`python -m unimodal_jax.summary` reads the config's model kind and lists its parameters
  with their shardings, from the parameters' shapes alone (the 7B model is never built)."""
  proc = _run("-m", "unimodal_jax.summary", f"--config={config}",
              *(["--noforward"] if count else []))
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert f"kind        {kind}" in lines
  params = next(line for line in lines if line.startswith("params"))
  if count:
    assert count in params
  assert sum(line.count("/") > 0 for line in lines) > 3  # parameter rows like "a/b/kernel"
