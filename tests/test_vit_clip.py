"""ViT towers against transformers' CLIP and SigLIP vision models (random small configs, every
weight perturbed), the converter and its errors; then the small CLIP trainer on the built-in
worlds (a fast end-to-end run; the real experiment is marked slow)."""
import json
import re
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from unimodal_jax import hf_clip  # noqa: E402
from unimodal_jax.hf_decoder import SafetensorsDir  # noqa: E402
from unimodal_jax.models import vit  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=96,
             num_hidden_layers=3, num_attention_heads=4)
TOLERANCE = 1e-4


def _perturbed(model, seed=0):
  torch.manual_seed(seed)
  with torch.no_grad():  # HF zero-inits biases and ones-inits norms: perturb all of them
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval()


def _clip_vision(seed=0, **overrides):
  torch.manual_seed(seed)
  config = transformers.CLIPVisionConfig(**dict(SMALL, **overrides))
  return _perturbed(transformers.CLIPVisionModel(config), seed)


def _siglip_vision(seed=0, **overrides):
  torch.manual_seed(seed)
  config = transformers.SiglipVisionConfig(**dict(SMALL, **overrides))
  return _perturbed(transformers.SiglipVisionModel(config), seed)


def _images(cfg, batch=3, seed=1):
  return np.random.RandomState(seed).randn(batch, cfg.image_size, cfg.image_size,
                                           cfg.num_channels).astype(np.float32)


def _ours(hf_dir, prefix=None):
  with open(os.path.join(hf_dir, "config.json")) as f:
    cfg = hf_clip.config_from_hf(json.load(f))
  params = hf_clip.params_from_hf(SafetensorsDir(str(hf_dir)), cfg, prefix=prefix)
  return vit.VisionTransformer(cfg), params


def _compare(hf_vision, model, params, images, label):
  # Jitted: eager apply compiles op by op, several times slower on a small CPU.
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, return_hidden_states=True))
  out = apply(params, images)
  with torch.no_grad():
    ref = hf_vision(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
                    output_hidden_states=True)
  diffs = {"last_hidden_state": np.abs(np.asarray(out.last_hidden_state)
                                       - ref.last_hidden_state.numpy()).max()}
  if ref.pooler_output is not None:
    diffs["pooled"] = np.abs(np.asarray(out.pooled) - ref.pooler_output.numpy()).max()
  assert len(out.hidden_states) == len(ref.hidden_states) == model.config.num_layers + 1
  for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
    diffs[f"hidden_states[{i}]"] = np.abs(np.asarray(a) - b.numpy()).max()
  print(f"parity {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
  assert max(diffs.values()) <= TOLERANCE, diffs
  return out


@pytest.mark.parametrize("overrides", [{}, {"hidden_act": "gelu", "num_hidden_layers": 2}])
def test_clip_vision_matches_transformers(tmp_path, overrides):
  hf = _clip_vision(**overrides)
  hf.save_pretrained(tmp_path / "hf")
  model, params = _ours(tmp_path / "hf")
  assert model.config.class_token and model.config.pooling == "cls"
  assert model.config.hidden_act == overrides.get("hidden_act", "quick_gelu")
  out = _compare(hf, model, params, _images(model.config), f"clip {overrides}")
  assert out.last_hidden_state.shape == (3, 17, 64) and out.pooled.shape == (3, 64)
  features = vit.patch_features(out, model.config)  # DreamLLM's penultimate-layer patches
  np.testing.assert_array_equal(features, out.hidden_states[-2][:, 1:])


def test_clip_vision_inside_full_clip_model(tmp_path):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      vision_config=dict(SMALL), projection_dim=16,
      text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=1))
  full = _perturbed(transformers.CLIPModel(config), seed=3)
  full.save_pretrained(tmp_path / "full")
  reader = SafetensorsDir(str(tmp_path / "full"))
  assert hf_clip.detect_prefix(reader) == "vision_model."
  assert any(n.startswith("text_model.") for n in reader.names())  # left alone, not an error
  model, params = _ours(tmp_path / "full")
  _compare(full.vision_model, model, params, _images(model.config), "clip (full CLIPModel)")


def test_transformers_4_style_prefix_in_a_vision_checkpoint(tmp_path):
  """transformers 4.x saved CLIPVisionModel tensors as `vision_model.…` (and position_ids)."""
  hf = _clip_vision(seed=5)
  tensors = {f"vision_model.{k}": v.numpy() for k, v in hf.state_dict().items()}
  tensors["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
  (tmp_path / "old").mkdir()
  safetensors_numpy.save_file(tensors, str(tmp_path / "old" / "model.safetensors"))
  hf.config.to_json_file(str(tmp_path / "old" / "config.json"))
  model, params = _ours(tmp_path / "old")
  _compare(hf, model, params, _images(model.config), "clip (4.x prefix)")


@pytest.mark.parametrize("overrides", [{}, {"vision_use_head": False, "num_hidden_layers": 2}])
def test_siglip_vision_matches_transformers(tmp_path, overrides):
  hf = _siglip_vision(seed=2, **overrides)
  hf.save_pretrained(tmp_path / "hf")
  model, params = _ours(tmp_path / "hf")
  cfg = model.config
  assert not cfg.class_token and cfg.patch_bias and cfg.post_layernorm == "sequence"
  assert cfg.pooling == ("none" if overrides else "map") and cfg.hidden_act == "gelu_tanh"
  out = _compare(hf, model, params, _images(cfg), f"siglip {overrides}")
  assert out.last_hidden_state.shape == (3, 16, 64)


def test_convert_writes_a_vit_checkpoint_that_loads(tmp_path):
  hf = _clip_vision(seed=4)
  hf.save_pretrained(tmp_path / "hf")
  cfg = hf_clip.convert_clip_vision(str(tmp_path / "hf"), str(tmp_path / "ours"))
  meta = json.loads((tmp_path / "ours" / "0" / "model_config" / "metadata").read_text())
  assert meta["kind"] == "vit" and vit.VitConfig.from_dict(meta) == cfg
  diff = hf_clip.max_difference(str(tmp_path / "hf"), str(tmp_path / "ours"))
  print(f"converted checkpoint: {diff}")
  assert max(diff.values()) <= TOLERANCE
  with pytest.raises(FileExistsError, match="not empty"):
    hf_clip.convert_clip_vision(str(tmp_path / "hf"), str(tmp_path / "ours"))


def test_convert_hf_tool_routes_vision_towers_and_checks_them(tmp_path, capsys):
  """tools/convert_hf.py picks the vision converter from config.json's model_type (a full
  SiglipModel here: only its vision half is kept) and --check_logits compares with transformers."""
  sys.path.insert(0, os.path.join(REPO, "tools"))
  try:
    import convert_hf
  finally:
    sys.path.pop(0)
  torch.manual_seed(6)
  full = _perturbed(transformers.SiglipModel(transformers.SiglipConfig(
      vision_config=SMALL, text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48,
                                            num_hidden_layers=1, num_attention_heads=2))), 6)
  full.save_pretrained(tmp_path / "hf")
  rc = convert_hf.main(["--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "ours"),
                        "--check_logits"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "converted vision tower: 3 layers, hidden 64" in out and "ok" in out
  model, params = hf_clip.load_vit(str(tmp_path / "ours"))
  _compare(full.vision_model, model, params, _images(model.config), "siglip via convert_hf")
  # A tolerance no float32 run can meet makes the check fail (it compares, not just runs).
  rc = convert_hf.main(["--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "again"),
                        "--check_logits", "--tolerance", "0"])
  assert rc == 1 and "FAILED" in capsys.readouterr().out


def test_num_params_matches_the_initialized_tree():
  for kw in ({}, dict(class_token=False, patch_bias=True, pre_layernorm=False,
                      post_layernorm="sequence", pooling="map", hidden_act="gelu_tanh"),
             dict(pooling="mean", post_layernorm="none")):
    cfg = vit.VitConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=40,
                        num_layers=2, num_heads=4, **kw)
    shapes = vit.param_shapes(cfg)
    assert sum(int(np.prod(s)) for s in shapes.values()) == cfg.num_params(), kw


def test_bfloat16_compute_stays_close():
  cfg = vit.VitConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=96,
                      num_layers=2, num_heads=4)
  params = vit.init_params(cfg)
  images = _images(cfg)
  ref = jax.jit(vit.VisionTransformer(cfg).apply)({"params": params}, images).pooled
  low = jax.jit(vit.VisionTransformer(cfg.replace(dtype="bfloat16")).apply)({"params": params},
                                                                           images)
  assert low.pooled.dtype == jax.numpy.bfloat16
  assert np.abs(np.asarray(low.pooled, np.float32) - np.asarray(ref)).max() < 0.1


# ----------------------------------------------------------------------------- errors


def _write(tmp_path, name, tensors, config):
  d = tmp_path / name
  d.mkdir()
  safetensors_numpy.save_file(tensors, str(d / "model.safetensors"))
  (d / "config.json").write_text(json.dumps(config))
  return d


def _state(hf):
  return {k: v.numpy() for k, v in hf.state_dict().items()}


def test_errors_name_the_tensor_or_field(tmp_path):
  hf = _clip_vision()
  config = hf.config.to_dict()
  tensors = _state(hf)

  missing = dict(tensors)
  del missing["encoder.layers.1.mlp.fc2.bias"]
  with pytest.raises(KeyError, match=r"encoder\.layers\.1\.mlp\.fc2\.bias.*layers_1/mlp/fc2/bias"):
    _ours(_write(tmp_path, "missing", missing, config))

  extra = dict(tensors, **{"encoder.layers.3.mlp.fc1.weight": np.zeros((96, 64), np.float32)})
  with pytest.raises(ValueError, match=r"not used.*encoder\.layers\.3\.mlp\.fc1\.weight"):
    _ours(_write(tmp_path, "extra", extra, config))

  with pytest.raises(ValueError, match=r"mlp\.fc1\.weight' has shape \(96, 64\).*\(128, 64\)"):
    _ours(_write(tmp_path, "shape", tensors, dict(config, intermediate_size=128)))

  with pytest.raises(ValueError, match=r"hidden_act='relu'"):
    hf_clip.config_from_hf(dict(config, hidden_act="relu"))
  with pytest.raises(ValueError, match=r"model_type='llama'"):
    hf_clip.config_from_hf({"model_type": "llama"})
  with pytest.raises(ValueError, match=r"vision_config: .*image_size=30 is not a multiple"):
    hf_clip.config_from_hf({"model_type": "clip", "vision_config": dict(SMALL, image_size=30)})

  no_tower = _write(tmp_path, "text_only", {"text_model.x": np.zeros(3, np.float32)}, config)
  with pytest.raises(KeyError, match="no vision tower"):
    _ours(no_tower)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"pooling='cls' needs vit.class_token"):
    vit.VitConfig(class_token=False, pooling="cls")
  with pytest.raises(ValueError, match=r"vit.post_layernorm='after'"):
    vit.VitConfig(post_layernorm="after")
  with pytest.raises(ValueError, match=r"unknown vit config field\(s\) \['layers'\]"):
    vit.VitConfig.from_dict({"layers": 3})
  with pytest.raises(ValueError, match=r"kind='decoder'"):
    vit.VitConfig.from_dict({"kind": "decoder"})
  cfg = vit.VitConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=40,
                      num_layers=1, num_heads=4)
  with pytest.raises(ValueError, match=r"images of shape \(1, 16, 16, 3\)"):
    vit.VisionTransformer(cfg).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))


# ----------------------------------------------------------------------------- small CLIP

from unimodal_jax.models import clip  # noqa: E402


def _tiny_clip(**text):
  vision = vit.VitConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=48,
                         num_layers=1, num_heads=4)
  text = clip.TextConfig(**dict(dict(vocab_size=50, max_len=12, hidden_size=32,
                                     intermediate_size=48, num_layers=2, num_heads=4), **text))
  return clip.ClipConfig(vision=vision, text=text, projection_dim=16)


@pytest.mark.parametrize("text", [{}, {"causal": False, "pooling": "mean"}])
def test_text_tower_ignores_padding(text):
  cfg = _tiny_clip(**text)
  model = clip.Clip(cfg)
  tokens = np.array([[5, 9, 3, 0, 0, 0, 0, 0], [7, 3, 0, 0, 0, 0, 0, 0]], np.int32)
  images = np.zeros((2, 16, 16, 3), np.float32)
  params = jax.jit(model.init)(jax.random.key(0), images, tokens)["params"]
  encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method=clip.Clip.encode_text))
  emb = encode(params, tokens)
  shorter = encode(params, tokens[:, :3])
  np.testing.assert_allclose(emb, shorter, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  if text.get("causal", True):  # EOS pooling: what follows EOS (padding) cannot matter
    later = tokens.copy()
    later[0, 4] = 11  # a token after the padding starts; never pooled, never attended
    np.testing.assert_allclose(encode(params, later)[1], emb[1], atol=1e-6)


def test_contrastive_loss_is_symmetric_infonce():
  rng = np.random.RandomState(0)
  a, b = rng.randn(5, 8), rng.randn(5, 8)
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  b /= np.linalg.norm(b, axis=1, keepdims=True)
  logits = 3.0 * a @ b.T

  def ce(z, targets):  # rows of z against rows of target probabilities
    z = z - z.max(1, keepdims=True)
    return -(targets * (z - np.log(np.exp(z).sum(1, keepdims=True)))).sum(1).mean()

  loss, metrics = clip.contrastive_loss(a, b, 3.0)
  eye = np.eye(5)
  np.testing.assert_allclose(loss, 0.5 * (ce(logits, eye) + ce(logits.T, eye)), rtol=1e-5)
  positives = eye.astype(bool)
  positives[0, 1] = positives[1, 0] = True  # texts 0 and 1 are the same caption
  loss, _ = clip.contrastive_loss(a, b, 3.0, positives)
  t = positives / positives.sum(1, keepdims=True)
  np.testing.assert_allclose(loss, 0.5 * (ce(logits, t) + ce(logits.T, t.T)), rtol=1e-5)
  assert 0.0 <= float(metrics["accuracy_i2t"]) <= 1.0


def test_clip_config_round_trip_and_errors():
  cfg = _tiny_clip()
  assert clip.ClipConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  d = cfg.to_dict()
  with pytest.raises(ValueError, match=r"unknown model.text config field\(s\) \['width'\]"):
    clip.ClipConfig.from_dict(dict(d, text=dict(d["text"], width=3)))
  with pytest.raises(ValueError, match=r"model.text.pooling='cls'"):
    clip.ClipConfig.from_dict(dict(d, text=dict(d["text"], pooling="cls")))
  with pytest.raises(ValueError, match=r"model.vision.pooling='none'"):
    clip.ClipConfig.from_dict(dict(d, vision=dict(d["vision"], pooling="none",
                                                  post_layernorm="none")))
  with pytest.raises(ValueError, match=r"kind='vit'"):
    clip.ClipConfig.from_dict(dict(d, kind="vit"))


def _train(workdir, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as on the command line
  return subprocess.run(
      [sys.executable, "-m", "unimodal_jax.train.contrastive",
       "--config=" + os.path.join(REPO, "experiments", "tiny", "clip_shapes.py") + args[0],
       f"--workdir={workdir}", *args[1:]], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.slow
def test_contrastive_trainer_runs_end_to_end(tmp_path):
  proc = _train(tmp_path / "run", ":micro")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r"step +30/30", proc.stdout) and "zero-shot digit" in proc.stdout
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  history = [h["loss"] for h in results["train"]["history"]]
  assert np.mean(history[-2:]) < np.mean(history[:2]) - 0.3, history
  assert set(results["zero_shot"]) == {"shape", "color", "count", "digit"}
  assert results["zero_shot"]["digit"]["n"] == 270  # the judge_test split
  assert results["zero_shot"]["count"]["chance"] == 0.25
  meta = json.loads((tmp_path / "run" / "checkpoints" / "30" / "model_config" / "metadata")
                    .read_text())
  assert meta["kind"] == "clip" and clip.ClipConfig.from_dict(meta).vision.image_size == 32
  assert (tmp_path / "run" / "tokenizer.model").exists()
  # A finished workdir is not trained again: the rerun finds the completed run and re-scores it.
  again = _train(tmp_path / "run", ":micro")
  assert again.returncode == 0 and "already holds a completed run of 30 steps" in again.stdout
  assert json.loads((tmp_path / "run" / "results.json").read_text())["zero_shot"] == \
      results["zero_shot"]


def test_contrastive_trainer_names_a_bad_config_field(tmp_path):
  proc = _train(tmp_path / "bad", ":micro", "--config.model.text.max_len=8")
  assert proc.returncode == 2
  assert "more than model.text.max_len=8" in proc.stderr


# experiments/tiny/clip_shapes.py reaches shape 0.76, color 1.00, count 0.60, digit 0.57.
THRESHOLDS = {"shape": 0.55, "color": 0.9, "count": 0.45, "digit": 0.4}


@pytest.mark.slow
def test_tiny_clip_experiment_learns_zero_shot(tmp_path):
  proc = _train(tmp_path / "clip", "")
  assert proc.returncode == 0, proc.stderr[-3000:]
  print(proc.stdout[-1500:])
  zero_shot = json.loads((tmp_path / "clip" / "results.json").read_text())["zero_shot"]
  for name, floor in THRESHOLDS.items():
    r = zero_shot[name]
    assert r["accuracy"] >= floor and r["accuracy"] > r["majority"] + 0.1, (name, r)
