"""Stable Diffusion's U-Net and VAE against diffusers (PyTorch, CPU, float32) on random small
configs in both styles, weights in and out through the diffusers file layout, and the refusals.
The bound: max |ours - diffusers| <= 1e-4 x the output's scale (max |diffusers|)."""
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from unimodal_jax import checkpoints, hf_diffusers  # noqa: E402
from unimodal_jax.models import unet as unet_lib, vae as vae_lib  # noqa: E402

SD1_STYLE = dict(  # conv projections, one head count everywhere
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=4,
    cross_attention_dim=24, norm_num_groups=8, use_linear_projection=False)
SD2_STYLE = dict(  # linear projections, heads per block, upcast attention
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[32, 64, 64],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=[2, 4, 4], cross_attention_dim=40, norm_num_groups=16,
    use_linear_projection=True, upcast_attention=True)
VAE_SMALL = dict(sample_size=32, in_channels=3, out_channels=3, latent_channels=4,
                 block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8,
                 down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2)


def _perturb(module, seed):
  """diffusers zero-inits nothing here, but its norms start at exactly 1 and 0: move every
  parameter a little so a transposed or swapped tensor cannot go unnoticed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return module


def _state(module) -> dict:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _unet_pair(hf_config, seed=0):
  torch.manual_seed(seed)
  ref = _perturb(diffusers.UNet2DConditionModel(**hf_config).eval(), seed)
  config = hf_diffusers.config_from_diffusers(
      {"_class_name": "UNet2DConditionModel", **hf_config}, attention_impl="xla")
  params = hf_diffusers.params_from_diffusers(_state(ref), config)
  return ref, unet_lib.UNet(config), params


def _unet_difference(ref, model, params, batch=2, seed=0):
  cfg = model.config
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, cfg.sample_size, cfg.sample_size, cfg.in_channels), np.float32)
  t = np.array([3, 917][:batch])
  c = rng.standard_normal((batch, 7, cfg.cross_attention_dim), np.float32)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, x, t, c))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                 torch.from_numpy(c)).sample.numpy().transpose(0, 2, 3, 1)
  return float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())


@pytest.mark.parametrize("style", ["sd1", "sd2"])
def test_unet_matches_diffusers(style):
  hf_config = SD1_STYLE if style == "sd1" else SD2_STYLE
  ref, model, params = _unet_pair(hf_config)
  diff, scale = _unet_difference(ref, model, params)
  assert scale > 0.1
  assert diff <= 1e-4 * scale, (style, diff, scale)


def test_vae_matches_diffusers():
  torch.manual_seed(0)
  ref = _perturb(diffusers.AutoencoderKL(**VAE_SMALL).eval(), 1)
  config = hf_diffusers.config_from_diffusers({"_class_name": "AutoencoderKL", **VAE_SMALL},
                                              attention_impl="xla")
  params = hf_diffusers.params_from_diffusers(_state(ref), config)
  model = vae_lib.VAE(config)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  mean, logvar = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, x)
  assert mean.shape == logvar.shape == (2, 16, 16, 4)
  decoded = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))(params, mean)
  with torch.no_grad():
    posterior = ref.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    theirs_images = ref.decode(posterior.mean).sample.numpy().transpose(0, 2, 3, 1)
  for ours, theirs in ((mean, posterior.mean.numpy().transpose(0, 2, 3, 1)),
                       (logvar, posterior.logvar.numpy().transpose(0, 2, 3, 1)),
                       (decoded, theirs_images)):
    scale = float(np.abs(theirs).max())
    assert float(np.abs(np.asarray(ours) - theirs).max()) <= 1e-4 * scale


def _save_diffusers(module, directory):
  module.save_pretrained(directory, safe_serialization=True)
  return directory


@pytest.mark.slow
def test_convert_and_export_round_trip(tmp_path):
  """diffusers files -> convert_hf.py -> load_pretrained -> export_hf.py -> diffusers loads it
  and computes the same output."""
  from tools import convert_hf, export_hf
  torch.manual_seed(0)
  ref = _perturb(diffusers.UNet2DConditionModel(**SD2_STYLE).eval(), 2)
  hf_dir = _save_diffusers(ref, str(tmp_path / "hf_unet"))
  assert convert_hf.main(["--hf_dir", hf_dir, "--out_dir", str(tmp_path / "ours"),
                          "--check_logits"]) == 0
  model, params = checkpoints.load_pretrained(str(tmp_path / "ours"))
  assert isinstance(model, unet_lib.UNet)
  diff, scale = _unet_difference(ref, model, params)
  assert diff <= 1e-4 * scale
  assert export_hf.main(["--ckpt", str(tmp_path / "ours"), "--hf_dir",
                         str(tmp_path / "back")]) == 0
  back = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "back")).eval()
  for name, value in ref.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[name].numpy(), value.numpy(), err_msg=name)


def test_pipeline_directory_converts_in_one_command(tmp_path):
  torch.manual_seed(0)
  root = tmp_path / "sd"
  _save_diffusers(diffusers.UNet2DConditionModel(**SD1_STYLE), str(root / "unet"))
  _save_diffusers(diffusers.AutoencoderKL(**VAE_SMALL), str(root / "vae"))
  diffusers.DDIMScheduler().save_pretrained(str(root / "scheduler"))
  from tools import convert_hf
  assert convert_hf.main(["--hf_dir", str(root), "--out_dir", str(tmp_path / "out")]) == 0
  unet, _ = checkpoints.load_pretrained(str(tmp_path / "out" / "unet"))
  vae, vae_params = checkpoints.load_pretrained(str(tmp_path / "out" / "vae"))
  assert isinstance(unet, unet_lib.UNet) and isinstance(vae, vae_lib.VAE)
  assert unet.config.cross_attention_dim == 24 and vae.config.latent_channels == 4
  assert os.path.exists(tmp_path / "out" / "scheduler" / "scheduler_config.json")


def test_unsupported_config_fields_are_refused_by_name():
  base = {"_class_name": "UNet2DConditionModel", **SD1_STYLE}
  with pytest.raises(ValueError, match="class_embed_type"):
    hf_diffusers.config_from_diffusers({**base, "class_embed_type": "timestep"})
  with pytest.raises(ValueError, match="addition_embed_type"):
    hf_diffusers.config_from_diffusers({**base, "addition_embed_type": "text_time"})
  with pytest.raises(ValueError, match="made_up_field"):
    hf_diffusers.config_from_diffusers({**base, "made_up_field": 1})
  with pytest.raises(ValueError, match="_class_name"):
    hf_diffusers.config_from_diffusers({**SD1_STYLE, "_class_name": "UNet3DConditionModel"})
  with pytest.raises(ValueError, match="shift_factor"):
    hf_diffusers.config_from_diffusers({"_class_name": "AutoencoderKL", **VAE_SMALL,
                                        "shift_factor": 0.1159})


def test_wrong_or_missing_tensors_are_named():
  torch.manual_seed(0)
  ref = diffusers.UNet2DConditionModel(**SD1_STYLE)
  config = hf_diffusers.config_from_diffusers({"_class_name": "UNet2DConditionModel",
                                               **SD1_STYLE})
  state = _state(ref)
  missing = dict(state)
  del missing["mid_block.attentions.0.proj_in.weight"]
  with pytest.raises(KeyError, match="mid_block/attentions_0/proj_in/kernel"):
    hf_diffusers.params_from_diffusers(missing, config)
  extra = dict(state, **{"mid_block.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match="mid_block.extra.weight"):
    hf_diffusers.params_from_diffusers(extra, config)
  other = hf_diffusers.config_from_diffusers({"_class_name": "UNet2DConditionModel",
                                              **dict(SD1_STYLE, cross_attention_dim=32)})
  with pytest.raises(ValueError, match="attn2.to_k.weight"):
    hf_diffusers.params_from_diffusers(state, other)


def test_sample_size_and_condition_width_are_checked():
  config = hf_diffusers.config_from_diffusers({"_class_name": "UNet2DConditionModel",
                                               **SD2_STYLE})
  model = unet_lib.UNet(config)
  with pytest.raises(ValueError, match="multiples of 4"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 10, 16, 4), np.float32),
                                      np.zeros(1), np.zeros((1, 3, 40), np.float32)))
  with pytest.raises(ValueError, match="cross_attention_dim=40"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 16, 16, 4), np.float32),
                                      np.zeros(1), np.zeros((1, 3, 41), np.float32)))


def test_every_parameter_has_logical_axes():
  """Sharding by names needs a logical axis name on every U-Net and VAE parameter."""
  import flax.linen as nn
  import jax.numpy as jnp
  from unimodal_jax import sharding
  config = hf_diffusers.config_from_diffusers({"_class_name": "UNet2DConditionModel",
                                               **SD1_STYLE}, attention_impl="xla")
  vae_config = hf_diffusers.config_from_diffusers({"_class_name": "AutoencoderKL", **VAE_SMALL})
  for cfg in (config, vae_config):
    boxed = sharding.abstract_params(vae_lib.VAE(cfg) if cfg is vae_config
                                     else unet_lib.UNet(cfg), cfg)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


@pytest.mark.slow
def test_remat_keeps_the_gradients():
  """Remat by policy name recomputes activations without changing the gradient (slow: two
  U-Net backward compiles)."""
  import flax.linen as nn
  import jax.numpy as jnp
  config = hf_diffusers.config_from_diffusers({"_class_name": "UNet2DConditionModel",
                                               **SD1_STYLE}, attention_impl="xla")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 4), np.float32)
  c = rng.standard_normal((2, 5, 24), np.float32)
  t = np.array([10, 500])
  params = nn.meta.unbox(unet_lib.UNet(config).init(jax.random.key(0), x, t, c))["params"]

  def grads(policy):
    model = unet_lib.UNet(config.replace(remat_policy=policy))
    return jax.jit(jax.grad(lambda p, c: jnp.mean(model.apply({"params": p}, x, t, c) ** 2),
                            argnums=(0, 1)))(params, c)
  plain, remat = grads("none"), grads("full")
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_sd21_base_shapes_equal_diffusers():
  """experiments/dreamllm/sd21_base.py written out as a diffusers config builds (on torch's meta
  device: no memory) a U-Net with exactly our parameter names and shapes: 865.9M parameters."""
  from experiments.dreamllm import sd21_base
  config = unet_lib.UNetConfig.from_dict(sd21_base.get_config().model.to_dict())
  hf_config = hf_diffusers.config_to_diffusers(config)
  with torch.device("meta"):
    ref = diffusers.UNet2DConditionModel.from_config(hf_config)
  theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  ours = {"/".join(path): tuple(x.shape) for path, x in hf_diffusers.abstract_params(
      config).items()}
  converted = {"/".join(hf_diffusers.to_ours(hf_diffusers.path_of(name), np.empty(shape, np.int8),
                                             len(shape))[0]): None
               for name, shape in theirs.items()}
  assert set(converted) == set(ours)
  total = sum(int(np.prod(s)) for s in theirs.values())
  assert total == sum(int(np.prod(s)) for s in ours.values())
  assert 865e6 < total < 866e6


def test_sharded_weights_convert(tmp_path):
  """diffusion_pytorch_model.safetensors.index.json with several shards reads like one file."""
  torch.manual_seed(0)
  ref = _perturb(diffusers.AutoencoderKL(**VAE_SMALL).eval(), 3)
  ref.save_pretrained(str(tmp_path / "hf"), safe_serialization=True, max_shard_size="300KB")
  assert os.path.exists(tmp_path / "hf" / "diffusion_pytorch_model.safetensors.index.json")
  config = hf_diffusers.convert(str(tmp_path / "hf"), str(tmp_path / "ours"))
  _, params = checkpoints.load_pretrained(str(tmp_path / "ours"))
  state = _state(ref)
  for name, value in hf_diffusers.params_to_diffusers(params):
    np.testing.assert_array_equal(value, state[name], err_msg=name)
  assert config.latent_channels == 4
