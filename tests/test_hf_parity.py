"""Conversion from and to Hugging Face transformers: logits parity for LLaMA and Qwen2 (GQA),
the export round trip, sharded checkpoints, streaming memory, and clear errors."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from unimodal_jax import load_pretrained  # noqa: E402
from unimodal_jax import hf_decoder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=8, num_key_value_heads=2)


def _hf_model(family: str, seed: int = 0, **overrides):
  torch.manual_seed(seed)
  kw = dict(SMALL, **overrides)
  if family == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
  else:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
  with torch.no_grad():  # HF zero-inits biases and ones-inits norms: perturb all of them
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval()


def _run_tool(tool, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args],
                        capture_output=True, text=True, env=env)
  return proc


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def _convert(model, tmp_path, name="hf", **save_kw):
  hf_dir, out_dir = tmp_path / name, tmp_path / f"{name}_ours"
  model.save_pretrained(hf_dir, **save_kw)
  proc = _run_tool("convert_hf.py", "--hf_dir", str(hf_dir), "--out_dir", str(out_dir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return hf_dir, out_dir


CASES = [
    ("llama", {}),  # 8 query heads over 2 key/value heads
    ("llama", {"num_key_value_heads": 8, "rope_theta": 500000.0, "attention_bias": True}),
    ("qwen2", {"tie_word_embeddings": True}),
    ("qwen2", {"tie_word_embeddings": False, "num_key_value_heads": 4}),
]


@pytest.mark.parametrize("family,overrides", CASES)
def test_converted_logits_match_transformers(tmp_path, family, overrides):
  hf = _hf_model(family, **overrides)
  _, out_dir = _convert(hf, tmp_path)
  model, params = load_pretrained(str(out_dir))
  assert model.config.num_kv_heads == hf.config.num_key_value_heads
  tokens = np.random.RandomState(1).randint(0, SMALL["vocab_size"], (3, 17))
  ours = np.asarray(model.apply({"params": params}, tokens))
  ref = _hf_logits(hf, tokens)
  assert ours.shape == ref.shape == (3, 17, SMALL["vocab_size"])
  print(f"parity {family} {overrides}: max |difference| {np.abs(ours - ref).max():.2e}")
  assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.slow
def test_convert_check_logits_flag(tmp_path):
  hf = _hf_model("qwen2", seed=7)
  hf.save_pretrained(tmp_path / "hf")
  proc = _run_tool("convert_hf.py", "--hf_dir", str(tmp_path / "hf"), "--out_dir",
                   str(tmp_path / "ok"), "--check_logits")
  assert proc.returncode == 0 and "logit check: max |ours - transformers|" in proc.stdout
  proc = _run_tool("convert_hf.py", "--hf_dir", str(tmp_path / "hf"), "--out_dir",
                   str(tmp_path / "strict"), "--check_logits", "--tolerance", "0")
  assert proc.returncode == 1 and "FAILED" in proc.stdout


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_export_round_trip_gives_same_logits(tmp_path, family):
  hf = _hf_model(family, seed=2, tie_word_embeddings=family == "qwen2")
  _, out_dir = _convert(hf, tmp_path)
  back = tmp_path / "back"
  proc = _run_tool("export_hf.py", "--ckpt", str(out_dir), "--hf_dir", str(back),
                   "--max_shard_gb", "0.0002")  # ~200 KB shards: exercise the sharded layout
  assert proc.returncode == 0, proc.stderr[-3000:]
  index = json.loads((back / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
  assert type(reloaded) is type(hf)
  tokens = np.random.RandomState(3).randint(0, SMALL["vocab_size"], (2, 11))
  np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(hf, tokens), atol=1e-6)


def test_sharded_hf_checkpoint_and_scan_layout(tmp_path):
  hf = _hf_model("llama", seed=4)
  _, out_dir = _convert(hf, tmp_path, max_shard_size="100KB")
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
  model, params = load_pretrained(str(out_dir), config_overrides={"scan_layers": True})
  assert params["layers"]["attn"]["q_proj"]["kernel"].shape[0] == SMALL["num_hidden_layers"]
  tokens = np.random.RandomState(5).randint(0, SMALL["vocab_size"], (2, 9))
  assert np.abs(np.asarray(model.apply({"params": params}, tokens)) -
                _hf_logits(hf, tokens)).max() <= 1e-4


def test_bf16_checkpoint_keeps_dtype_on_disk_and_loads_as_float32(tmp_path):
  hf = _hf_model("llama", seed=6).to(torch.bfloat16)
  _, out_dir = _convert(hf, tmp_path)
  model, params = load_pretrained(str(out_dir))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  ref = {k: v.float().numpy() for k, v in hf.state_dict().items()}
  np.testing.assert_array_equal(np.asarray(params["embed_tokens"]["embedding"]),
                                ref["model.embed_tokens.weight"])


def test_conversion_errors_name_the_problem(tmp_path):
  hf = _hf_model("llama")
  hf_dir = tmp_path / "hf"
  hf.save_pretrained(hf_dir)
  config = json.loads((hf_dir / "config.json").read_text())

  bad = dict(config, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0})
  with pytest.raises(ValueError, match="rope scaling"):
    hf_decoder.config_from_hf(bad)
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    hf_decoder.config_from_hf(dict(config, model_type="gpt2"))

  reader = hf_decoder.SafetensorsDir(str(hf_dir))
  cfg = hf_decoder.config_from_hf(config)
  with pytest.raises(KeyError, match="model.layers.3.self_attn.q_proj.weight"):
    hf_decoder.params_from_hf(reader, cfg.replace(num_layers=4))
  with pytest.raises(ValueError, match="not used by a llama decoder"):
    hf_decoder.params_from_hf(reader, cfg.replace(num_layers=2))
  with pytest.raises(ValueError, match=r"k_proj.weight' has shape"):
    hf_decoder.params_from_hf(reader, cfg.replace(num_heads=4, num_kv_heads=2, head_dim=16))

  out = tmp_path / "out"
  out.mkdir()
  (out / "something").write_text("x")
  proc = _run_tool("convert_hf.py", "--hf_dir", str(hf_dir), "--out_dir", str(out))
  assert proc.returncode == 2 and "not empty" in proc.stderr


def test_conversion_streams_instead_of_copying_the_model(tmp_path):
  """Peak anonymous memory of a conversion is bounded by the write budget and the largest
  tensor, not the checkpoint's size (tensors stream from memory maps); orbax's default save of a
  loaded model needs about 2x the model."""
  rng = np.random.RandomState(0)
  hidden, layers, vocab, mlp = 512, 24, 8000, 1408
  cfg = dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp,
             num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
             rms_norm_eps=1e-6, tie_word_embeddings=False)
  hf_dir = tmp_path / "big"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(cfg))
  tensors = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
             "model.norm.weight": (hidden,)}
  for i in range(layers):
    p = f"model.layers.{i}."
    tensors.update({p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"})
    tensors.update({p + "mlp.gate_proj.weight": (mlp, hidden), p + "mlp.up_proj.weight":
                    (mlp, hidden), p + "mlp.down_proj.weight": (hidden, mlp),
                    p + "input_layernorm.weight": (hidden,),
                    p + "post_attention_layernorm.weight": (hidden,)})
  from safetensors.numpy import save_file
  arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in tensors.items()}
  save_file(arrays, str(hf_dir / "model.safetensors"))
  model_bytes = sum(a.nbytes for a in arrays.values())
  del arrays
  script = f"""
import os, sys, threading, time
os.environ['JAX_PLATFORMS'] = 'cpu'
import jax, orbax.checkpoint, unimodal_jax.checkpoints
jax.devices()  # backend start-up is not the conversion's memory
sys.path.insert(0, {os.path.join(REPO, 'tools')!r})
import convert_hf
def anon():
  return int(open('/proc/self/status').read().split('RssAnon:')[1].split()[0]) * 1024
base = anon(); peak = [base]; done = [False]
def sample():
  while not done[0]:
    peak[0] = max(peak[0], anon()); time.sleep(0.005)
t = threading.Thread(target=sample); t.start()
rc = convert_hf.main(['--hf_dir', {str(hf_dir)!r}, '--out_dir', {str(tmp_path / 'out')!r},
                      '--concurrent_gb', '0.02'])
done[0] = True; t.join()
print('GROWTH', peak[0] - base, rc)
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  line = [l for l in proc.stdout.splitlines() if l.startswith("GROWTH")]
  assert line, proc.stderr[-3000:]
  growth, rc = map(int, line[0].split()[1:])
  assert rc == 0
  print(f"conversion grew {growth / 1e6:.0f} MB for a {model_bytes / 1e6:.0f} MB checkpoint")
  assert growth < 0.5 * model_bytes, f"conversion grew {growth / 1e6:.0f} MB for a " \
                                     f"{model_bytes / 1e6:.0f} MB checkpoint"
