"""TPU compilation on this CPU machine through libtpu's topology descriptions."""
import json
import os
import subprocess
import sys

import pytest

from unimodal_jax import aot
from tests.helpers import tiny_config

pytest.importorskip("libtpu", reason="AOT TPU compilation needs the libtpu wheel")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,expected", [
    ("v5p-256", ("v5p", "v5p:4x4x8", 128)),
    ("v5p-8", ("v5p", "v5p:2x2x1", 4)),
    ("v4-128", ("v4", "v4:4x4x4", 64)),
    ("v5e-256", ("v5e", "v5e:16x16", 256)),
    ("v5e-8", ("v5e", "v5e:2x4", 8)),
    ("v6e-64", ("v6e", "v6e:8x8", 64)),
    ("v5e:2x2", ("v5e", "v5e:2x2", 4)),
])
def test_parse_topology(name, expected):
  assert aot.parse_topology(name) == expected


def test_bad_topology_names():
  with pytest.raises(ValueError, match="unknown topology 'tpu-9'"):
    aot.parse_topology("tpu-9")
  with pytest.raises(ValueError, match="not a power of two"):
    aot.parse_topology("v5e-12")
  with pytest.raises(ValueError, match="2 cores per chip"):
    aot.parse_topology("v5p-3")


def test_tiny_forward_backward_compiles_for_v5e_2x2():
  # Dimensions in multiples of TPU tiles (8 x 128), so padding does not blur the byte counts.
  config = tiny_config(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_heads=8,
                       num_kv_heads=8, head_dim=128, num_layers=2)
  replicated = aot.compile_for_topology(config, {"data": -1}, "v5e:2x2", 8, 64)
  fsdp = aot.compile_for_topology(config, {"fsdp": -1}, "v5e:2x2", 8, 64)
  param_bytes = config.num_params() * 4
  for result in (replicated, fsdp):
    assert result["num_chips"] == 4 and result["fits"]
    assert result["hbm_capacity_bytes"] == 16 * 1024**3
    assert 0 < result["per_chip_hbm_bytes"] < result["hbm_capacity_bytes"]
  # Replicated: every chip holds all params and all grads; FSDP: a quarter of each.
  assert replicated["argument_bytes"] >= param_bytes
  assert fsdp["argument_bytes"] < 0.3 * replicated["argument_bytes"]
  assert fsdp["output_bytes"] < 0.3 * replicated["output_bytes"]
  # The analytic FLOP count (used for MFU) agrees with the TPU compiler's (layers unrolled).
  ratio = replicated["compiler_flops_per_step"] / replicated["flops_per_step"]
  assert 0.9 < ratio < 1.3, ratio
  # The roofline fields follow from the compiler's counts and the v5e chip's figures.
  chip = aot.CHIPS["v5e"]
  bytes_per_chip = replicated["compiler_bytes_per_step"] / 4
  assert bytes_per_chip > param_bytes  # at least the params are read
  assert replicated["roofline_memory_s"] == pytest.approx(bytes_per_chip / chip.hbm_bytes_per_s)
  assert replicated["roofline_step_s"] == max(replicated["roofline_compute_s"],
                                              replicated["roofline_memory_s"])
  assert 0 < replicated["roofline_mfu"] <= 1.3


def test_roofline_picks_the_slower_of_compute_and_memory():
  chip = aot.ChipSpec(hbm_bytes=1, bf16_flops=100.0, hbm_bytes_per_s=10.0,
                      cores_per_chip_in_name=1, dims=2)
  compute_bound = aot.roofline(1000.0, 10.0, 800.0, chip)  # 10 s of math, 1 s of memory
  assert compute_bound["roofline_step_s"] == 10.0
  assert compute_bound["roofline_mfu"] == pytest.approx(0.8)
  memory_bound = aot.roofline(100.0, 50.0, 100.0, chip)  # 1 s of math, 5 s of memory
  assert memory_bound["roofline_step_s"] == 5.0
  assert memory_bound["roofline_mfu"] == pytest.approx(0.2)


@pytest.mark.slow
def test_tiny_train_step_compiles_with_optimizer_state():
  """The whole train step: arguments hold params + Adam's two moments (3x the params), donated
  to the outputs (aliased), and FSDP splits all of it over the chips."""
  from experiments.tiny import lm
  config = lm.get_config()
  config.model.update(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_heads=8,
                      num_kv_heads=8, head_dim=64, num_layers=2)
  param_bytes = aot.DecoderConfig.from_dict(config.model.to_dict()).num_params() * 4
  replicated = aot.compile_train_step_for_topology(config, "v5e:2x2")
  config.mesh.update(data=1, fsdp=-1)
  fsdp = aot.compile_train_step_for_topology(config, "v5e:2x2")
  assert replicated["program"] == "train_step" and replicated["fits"]
  assert replicated["argument_bytes"] >= 3 * param_bytes
  assert replicated["alias_bytes"] >= 3 * param_bytes  # the donated state is updated in place
  assert fsdp["argument_bytes"] < 0.3 * replicated["argument_bytes"]


def test_pod_program_takes_the_batch_the_loop_feeds():
  """The compiled train step's batch argument is the batch spec (train/batch_spec.py), segment
  ids and positions included, so the pod runs the packed, segment-masked program of the loop."""
  from experiments.tiny import documents_smoke
  from unimodal_jax import sharding
  from unimodal_jax.train import batch_spec
  config = documents_smoke.get_config()
  config.global_batch = 8
  _, devices = aot.topology_devices("v5e:2x2")
  compiled = aot.compile_train_step(config, sharding.make_mesh({"data": -1}, devices))
  _, batch_args = compiled.args_info[0]
  spec = batch_spec.batch_spec(config)
  assert set(batch_args) == set(spec) >= {"segment_ids", "positions", "target_modality"}
  for name, arg in batch_args.items():
    assert tuple(arg.shape) == spec[name].shape and arg.dtype == spec[name].dtype, name


def test_decoder_with_fused_attention_compiles_for_tpu():
  """attention_impl='pallas' puts the Mosaic flash-attention kernels (forward and backward)
  into the decoder's TPU program, under shard_map over the mesh."""
  config = tiny_config(vocab_size=512, hidden_size=256, intermediate_size=512, num_heads=2,
                       num_kv_heads=2, head_dim=128, num_layers=2, attention_impl="pallas")
  result = aot.compile_for_topology(config, {"data": 2, "fsdp": 2}, "v5e:2x2", 4, 256)
  assert result["fits"] and result["num_chips"] == 4


def test_train_step_with_kernels_compiles_for_v5p():
  """The whole train step (AdamW state, donation) with the Mosaic flash-attention kernels, and
  the Mosaic codebook lookup, compiled for a v5p slice."""
  import jax
  import jax.numpy as jnp
  from experiments.tiny import lm
  from unimodal_jax.kernels.vq_lookup import vq_lookup_sharded
  from unimodal_jax import sharding
  config = lm.get_config()
  config.model.update(hidden_size=256, intermediate_size=512, num_heads=2, num_kv_heads=2,
                      head_dim=128, num_layers=2, attention_impl="pallas")
  config.mesh.update(data=1, fsdp=-1)
  result = aot.compile_train_step_for_topology(config, "v5p-8")
  assert result["program"] == "train_step" and result["num_chips"] == 4 and result["fits"]

  _, devices = aot.topology_devices("v5p-8")
  mesh = sharding.make_mesh({"data": -1}, devices)
  x = jax.ShapeDtypeStruct((4096, 256), jnp.bfloat16, sharding=sharding.batch_sharding(mesh))
  c = jax.ShapeDtypeStruct((16384, 256), jnp.bfloat16)
  hlo = jax.jit(lambda a, b: vq_lookup_sharded(a, b, mesh, "data")).lower(x, c).compile()
  assert "tpu_custom_call" in hlo.as_text()


@pytest.mark.slow
def test_aot_tool_prints_json_last(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "aot_compile.py"),
       "--config=" + os.path.join(REPO, "experiments", "tiny", "lm.py"), "--topology=v5e:2x2",
       "--config.mesh.data=1", "--config.mesh.fsdp=-1"],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ("topology", "num_chips", "per_chip_hbm_bytes", "hbm_capacity_bytes", "fits",
              "flops_per_step"):
    assert key in result
  assert result["topology"] == "v5e:2x2" and result["num_chips"] == 4 and result["fits"]
  assert result["program"] == "train_step"
  assert result["batch_fields"] == {
      name: {"shape": [16, 128], "dtype": dtype}
      for name, dtype in (("inputs", "int32"), ("targets", "int32"), ("target_mask", "float32"))}


def test_aot_tool_rejects_a_mesh_bigger_than_the_pod():
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "aot_compile.py"),
       "--config=" + os.path.join(REPO, "experiments", "tiny", "lm.py"), "--topology=v5e:2x2",
       "--config.mesh.data=8"],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0
  assert "needs 8 devices, but there are 4" in proc.stderr


@pytest.mark.slow
def test_vicuna7b_fits_v5p_256():
  config_module = os.path.join(REPO, "experiments", "illume", "vicuna7b.py")
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "aot_compile.py"), "--config=" + config_module,
       "--topology=v5p-256"], capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["num_chips"] == 128 and result["fits"]
  assert 6.8e9 < result["num_params"] < 7.0e9


@pytest.mark.slow
def test_illume_stage3_train_step_fits_v5p_256():
  """The whole ILLUME model (Vicuna-7B + ViT-L/14 + adapter + 16,384 codes) at stage 3: Table 5's
  batch, every part trained (AdamW state for all of them), 16 views per row. Stages 1 and 2 need
  less of everything (the next test), so stage 3 fitting is what the pod needs."""
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "aot_compile.py"),
       "--config=" + os.path.join(REPO, "experiments", "illume", "stage3.py"),
       "--topology=v5p-256"], capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["program"] == "train_step" and result["global_batch"] == 1024
  assert result["fits"], result


def test_illume_stage3_bounds_the_memory_of_stages_1_and_2():
  """Why compiling stage 3 alone checks the pod's memory for all three stages: the same model,
  mesh and remat; a row as long; at least as many rows and views; and a superset of the trained
  parts (optimizer state and gradients exist only for trained parts)."""
  from experiments.illume import stage1, stage2, stage3
  c3 = stage3.get_config()
  trained = lambda c: {p for p, g in c.optimizer.groups.items() if not g.get("frozen")}
  for earlier in (stage1.get_config(), stage2.get_config()):
    assert earlier.model.to_dict() == c3.model.to_dict()
    assert earlier.mesh.to_dict() == c3.mesh.to_dict()
    assert earlier.seq_len == c3.seq_len
    assert earlier.global_batch <= c3.global_batch
    assert earlier.data.format.max_images <= c3.data.format.max_images
    assert trained(earlier) <= trained(c3)
  assert (stage1.get_config().global_batch, stage2.get_config().global_batch) == (256, 1024)


def _tiny_unet_experiment(finetune: bool):
  """experiments/dreamllm/sd21_base.py's layout with a U-Net small enough to compile in seconds
  (the same code path as SD-2.1-base; the real one is a slow test)."""
  from experiments.dreamllm import sd21_base
  config = sd21_base.get_config("finetune" if finetune else None)
  config.model.update(sample_size=16, block_out_channels=[32, 64], layers_per_block=1,
                      down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                      num_attention_heads=[2, 4], norm_num_groups=8, cross_attention_dim=64,
                      condition_length=8)
  config.global_batch = 8
  return config


@pytest.mark.slow
def test_frozen_unet_program_returns_only_the_condition_gradient():
  """DreamLLM's program: the U-Net's weights are inputs, not outputs (no weight gradients, no
  optimizer state); the only output besides the loss is d loss / d condition. The fine-tuning
  step instead carries params + two Adam moments, donated."""
  frozen = aot.compile_unet_for_topology(_tiny_unet_experiment(False), "v5e:2x2",
                                         "forward_backward")
  assert frozen["weights"] == "frozen" and frozen["fits"]
  assert frozen["fused_attention"]  # the Pallas kernel, not XLA's softmax(q k^T) v
  # Outputs: the loss and a [2, 8, 64] bf16 slice of the condition's gradient per chip (TPU
  # tiles pad it to a few KB), nowhere near the weights' gradient (bf16 params over 4 chips).
  assert frozen["output_bytes"] < 16 * 1024 < frozen["num_params"] * 2 // 4
  finetune = aot.compile_unet_for_topology(_tiny_unet_experiment(True), "v5e:2x2", "train_step")
  assert finetune["weights"] == "trained"
  assert finetune["alias_bytes"] >= 3 * finetune["num_params"] * 4 // 4  # fsdp over 4 chips
  # Analytic FLOPs: forward x 3 with weight gradients, forward x 2 without.
  assert finetune["flops_per_step"] == pytest.approx(1.5 * frozen["flops_per_step"], rel=0.01)
