"""The training entry point end to end, as a user runs it: resume after SIGKILL, non-finite
stop, resume onto another mesh, 2 processes against 1, TensorBoard, results.json, config errors."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from unimodal_jax import load_pretrained
from unimodal_jax.data import lm_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = "--config=" + os.path.join(REPO, "experiments", "tiny", "lm.py") + ":micro"


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
  """Tokenizer and token arrays, built once and shared by every run in this module."""
  from experiments.tiny import lm
  config = lm.get_config("micro")
  cache = str(tmp_path_factory.mktemp("data_cache"))
  lm_data.build_token_data(config.data, config.seq_len, cache, log=lambda *_: None)
  return cache


def _command(workdir, data_cache, *overrides):
  return [sys.executable, "-m", "unimodal_jax.train", MICRO, f"--workdir={workdir}",
          f"--config.data.cache_dir={data_cache}", *overrides]


def _env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _train(workdir, data_cache, *overrides, devices=1, check=True):
  proc = subprocess.run(_command(workdir, data_cache, *overrides), capture_output=True, text=True,
                        env=_env(devices), cwd=REPO)
  if check:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


def _params(workdir, step=None):
  _, params = load_pretrained(str(workdir), step=step)
  return jax.device_get(params)


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_sigkill_and_restart_give_bit_identical_params(tmp_path, data_cache):
  steps = ["--config.train.steps=160", "--config.train.checkpoint_every=20"]
  _train(tmp_path / "straight", data_cache, *steps)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(killed, data_cache, *steps), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=_env(), cwd=REPO)
  deadline = time.time() + 120
  while not os.path.isdir(killed / "checkpoints" / "40") and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert not (killed / "results.json").exists(), "the run finished before it was killed"

  restarted = _train(killed, data_cache, *steps)
  assert "resumed from" in restarted.stdout
  assert _results(killed)["step"] == 160
  straight, resumed = _params(tmp_path / "straight"), _params(killed)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_losses_stop_the_run_with_a_checkpoint(tmp_path, data_cache):
  proc = _train(tmp_path, data_cache, "--config.optimizer.learning_rate=1e30",
                "--config.optimizer.warmup_steps=0", "--config.optimizer.clip_grad_norm=0",
                "--config.train.max_consecutive_nonfinite=3", check=False)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "non-finite steps in a row" in proc.stdout
  results = _results(tmp_path)
  assert results["status"] == "stopped_nonfinite"
  assert results["train"]["consecutive_nonfinite"] == 3
  saved = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "checkpoints" / "*"))
                 if os.path.basename(p).isdigit())
  assert saved[-1] == results["step"]


@pytest.mark.slow
def test_resume_onto_another_mesh(tmp_path, data_cache):
  _train(tmp_path, data_cache, "--config.train.steps=20", "--config.mesh.data=2",
         "--config.mesh.fsdp=4", devices=8)
  saved_on_8 = _params(tmp_path, step=20)
  for devices, steps in ((4, 30), (1, 40)):
    proc = _train(tmp_path, data_cache, f"--config.train.steps={steps}", "--config.mesh.data=1",
                  "--config.mesh.fsdp=-1", devices=devices)
    assert f"resumed from" in proc.stdout and f"on mesh {{'data': 1, 'fsdp': {devices}" in proc.stdout
    results = _results(tmp_path)
    assert results["step"] == steps and results["mesh"]["fsdp"] == devices
    assert np.isfinite(results["train"]["loss"])
  # The 8-device checkpoint, restored onto 4 of this process's devices, is the same numbers.
  from unimodal_jax import sharding
  mesh = sharding.make_mesh({"fsdp": 4}, jax.devices()[:4])
  _, on_4 = load_pretrained(str(tmp_path), step=20, mesh=mesh)
  assert on_4["embed_tokens"]["embedding"].sharding.mesh.shape["fsdp"] == 4
  for a, b in zip(jax.tree.leaves(saved_on_8), jax.tree.leaves(jax.device_get(on_4))):
    np.testing.assert_array_equal(a, b)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, data_cache):
  common = ["--config.train.steps=12", "--config.train.log_every=1", "--config.mesh.data=-1",
            "--config.train.checkpoint_every=6"]
  _train(tmp_path / "one", data_cache, *common, devices=4)
  port = _free_port()
  procs = [subprocess.Popen(
      _command(tmp_path / "two", data_cache, *common, "--num_processes=2", f"--process_id={i}",
               f"--coordinator_address=127.0.0.1:{port}"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(2), cwd=REPO)
      for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
  assert two["num_processes"] == 2 and two["mesh"]["data"] == 4
  assert [s for s, _ in one["loss_history"]] == list(range(1, 13))
  np.testing.assert_allclose([l for _, l in two["loss_history"]],
                             [l for _, l in one["loss_history"]], rtol=2e-5)
  assert "step" not in outs[1][0], "only process 0 prints progress"


def _read_events(directory):
  """Scalars from TensorBoard event files: TFRecord framing around Event protos."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_results_tensorboard_and_learning(tmp_path, data_cache):
  _train(tmp_path, data_cache)
  results = _results(tmp_path)
  assert results["status"] == "completed" and results["step"] == 200
  # It learned: held-out loss clearly below the unigram baseline of the same tokens.
  assert results["eval"]["loss"] < results["unigram_heldout_loss"] - 0.3
  assert 0 < results["mfu"] < 1 and results["tokens_per_s"] > 0
  scalars = _read_events(tmp_path / "tensorboard")
  for tag in ("train/loss", "train/grad_norm", "train/lr/default", "train/tokens_per_s",
              "train/mfu", "eval/loss"):
    assert tag in scalars, sorted(scalars)
  # Every 10 steps, and the first (its loss is the starting point).
  assert [s for s, _ in scalars["train/loss"]] == [1] + list(range(10, 201, 10))
  assert scalars["eval/loss"][-1][1] == pytest.approx(results["eval"]["loss"], rel=1e-6)
  # The same command again finds the run complete and leaves its results alone.
  again = _train(tmp_path, data_cache)
  assert "already holds a completed run of 200 steps" in again.stdout
  assert _results(tmp_path) == results
  # load_pretrained reads a training workdir's latest params.
  model, params = load_pretrained(str(tmp_path))
  logits = model.apply({"params": params}, np.zeros((1, 5), np.int32))
  assert logits.shape == (1, 5, 512)


@pytest.mark.parametrize("overrides,message", [
    (["--config.mesh.data=16"], "needs 16 devices, but there are 1"),
    (["--config.global_batch=6", "--config.train.grad_accum_steps=4"],
     "train.grad_accum_steps=4 must divide config.global_batch=6"),
    (["--config.model.vocab_size=100"], "config.model.vocab_size=100 is smaller than"),
])
def test_config_errors_name_the_field(tmp_path, data_cache, overrides, message):
  proc = _train(tmp_path, data_cache, *overrides, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]


def test_unknown_parameter_group_fails_before_any_work(tmp_path):
  from experiments.tiny import lm
  from unimodal_jax.train import loop
  config = lm.get_config("micro")
  config.optimizer.groups = {"adapter": {"pattern": "adapter/.*", "learning_rate": 1e-3}}
  with pytest.raises(ValueError, match="optimizer.groups.adapter.pattern 'adapter/.*' matches no"):
    loop.run(config, str(tmp_path))
  assert not (tmp_path / "data").exists()  # failed before building data or compiling


@pytest.mark.slow
def test_tiny_lm_experiment_learns(tmp_path):
  """The documented tiny LM run: held-out loss well below the unigram baseline."""
  proc = subprocess.run([sys.executable, "-m", "unimodal_jax.train",
                         "--config=" + os.path.join(REPO, "experiments", "tiny", "lm.py"),
                         f"--workdir={tmp_path}"], capture_output=True, text=True, env=_env(),
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _results(tmp_path)
  assert results["eval"]["loss"] < results["unigram_heldout_loss"] - 1.0, results


@pytest.mark.slow
def test_document_pipeline_resumes_with_the_next_batch(tmp_path):
  """The pipeline's iterator state goes through the checkpoint: 20 steps, stop, resume to 40
  equals 40 straight steps bit for bit."""
  config = "--config=" + os.path.join(REPO, "experiments", "tiny", "documents_smoke.py")
  cache = f"--config.data.cache_dir={tmp_path / 'cache'}"

  def run(workdir, steps):
    proc = subprocess.run([sys.executable, "-m", "unimodal_jax.train", config,
                           f"--workdir={workdir}", cache, f"--config.train.steps={steps}"],
                          capture_output=True, text=True, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  run(tmp_path / "straight", 40)
  run(tmp_path / "split", 20)
  assert "resumed from" in run(tmp_path / "split", 40).stdout
  for a, b in zip(jax.tree.leaves(_params(tmp_path / "straight")),
                  jax.tree.leaves(_params(tmp_path / "split"))):
    np.testing.assert_array_equal(a, b)
  results = _results(tmp_path / "straight")
  assert results["data_skips"]["skipped"] == 0 and results["data_skips"]["kept"] > 0
  assert "loss/text" in results["train"] and results["eval"]["loss"] < results["train"]["loss"] + 1
