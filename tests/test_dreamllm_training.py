"""DreamLLM through the training loop (experiments/tiny/dreamllm_smoke.py): one forward pass for
both losses, each reported; a SIGKILLed run resumes bit-exactly; the frozen U-Net never moves."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from unimodal_jax import load_pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=" + os.path.join(REPO, "experiments", "tiny", "dreamllm_smoke.py")


def _command(workdir, cache):
  return [sys.executable, "-m", "unimodal_jax.train", CONFIG, f"--workdir={workdir}",
          f"--config.data.cache_dir={cache}"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


@pytest.mark.slow
def test_sigkill_resume_is_bit_exact_and_both_losses_are_reported(tmp_path):
  cache = tmp_path / "cache"
  straight = subprocess.run(_command(tmp_path / "straight", cache), capture_output=True,
                            text=True, env=_env(), cwd=REPO)
  assert straight.returncode == 0, straight.stderr[-3000:]
  with open(tmp_path / "straight" / "results.json") as f:
    results = json.load(f)
  train = results["train"]
  assert train["loss/diffusion"] > 0 and train["loss/lm"] > 0 and train["drawn_images"] >= 1
  np.testing.assert_allclose(train["loss"], train["loss/lm"] + 10.0 * train["loss/diffusion"],
                             rtol=1e-5)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(killed, cache), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=_env(), cwd=REPO)
  deadline = time.time() + 300
  while not os.path.isdir(killed / "checkpoints" / "10") and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert not (killed / "results.json").exists(), "the run finished before it was killed"
  resumed = subprocess.run(_command(killed, cache), capture_output=True, text=True, env=_env(),
                           cwd=REPO)
  assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]

  _, a = load_pretrained(str(tmp_path / "straight"))
  _, b = load_pretrained(str(killed))
  _, first = load_pretrained(str(killed), step=10)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  for name in ("unet", "vision_encoder"):  # frozen in stage II: exactly as at step 10
    for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(first[name])):
      np.testing.assert_array_equal(x, y)
  assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(a["dream_queries"]),
                                             jax.tree.leaves(first["dream_queries"])))


def test_stage_two_step_compiles_for_a_tpu_slice_with_the_spec_batch():
  """The DreamLLM train step (one pass for both losses, the frozen U-Net inside) compiles ahead
  of time for a v5e 2x2 from the batch spec, dream_images included: what the pod would run."""
  from experiments.tiny import dreamllm_smoke
  from unimodal_jax import aot, sharding
  from unimodal_jax.train import batch_spec
  config = dreamllm_smoke.get_config()
  config.global_batch = 4
  _, devices = aot.topology_devices("v5e:2x2")
  compiled = aot.compile_train_step(config, sharding.make_mesh({"data": -1}, devices))
  _, batch_args = compiled.args_info[0]
  spec = batch_spec.batch_spec(config)
  assert set(batch_args) == set(spec) >= {"dream_images", "dream_image_segment_ids", "images"}
  assert spec["dream_images"].shape == (4, 2, 16, 16, 3)
