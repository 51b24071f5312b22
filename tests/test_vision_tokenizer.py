"""The semantic tokenizer (features -> ids -> features) and the pixel VQ baseline."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unimodal_jax.models import pixel_vq
from unimodal_jax.models import vision_tokenizer as vt

CFG = vt.SemanticTokenizerConfig(feature_dim=24, num_tokens=6, codebook_size=64, code_dim=8,
                                 decoder_hidden=32, decoder_layers=1, decoder_heads=2,
                                 quantizer={"l2_normalized": True})


def _features(n, seed=0):
  """Features on a low-dimensional manifold, as a vision encoder's are."""
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(3, CFG.feature_dim))
  coeff = rng.normal(size=(n, CFG.num_tokens, 3))
  return jnp.asarray(coeff @ basis, jnp.float32)


def _init(model, x):
  variables = model.init(jax.random.key(0), x, train=False)
  return nn.meta.unbox(variables)


def test_encode_decode_is_the_forward_pass():
  model = vt.SemanticTokenizer(CFG)
  x = _features(3)
  variables = _init(model, x)
  recon, ids, aux = model.apply(variables, x, train=False)
  assert ids.shape == (3, 6) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < CFG.codebook_size
  np.testing.assert_array_equal(model.apply(variables, x, method=vt.SemanticTokenizer.encode), ids)
  np.testing.assert_allclose(
      model.apply(variables, ids, method=vt.SemanticTokenizer.decode_features), recon, atol=1e-5)
  assert "usage" in aux and "loss" in aux


def test_feature_loss_is_smooth_l1_plus_cosine():
  recon = jnp.array([[[0.5, 2.0]], [[1.0, -1.0]]])
  target = jnp.array([[[0.0, 0.0]], [[1.0, 1.0]]])
  out = vt.feature_reconstruction_loss(recon, target, CFG)
  diffs = np.abs(np.asarray(recon - target)).ravel()
  smooth = np.mean(np.where(diffs < 1, 0.5 * diffs ** 2, diffs - 0.5))
  cos = np.mean([0.0, 0.0])  # first: target is zero (cosine 0 by the epsilon); second: orthogonal
  assert float(out["smooth_l1"]) == pytest.approx(smooth)
  assert float(out["cosine"]) == pytest.approx(cos, abs=1e-6)
  assert float(out["loss"]) == pytest.approx(smooth + 1 - cos)


def test_training_reconstructs_features():
  model = vt.SemanticTokenizer(CFG)
  x = _features(256, seed=1)
  variables = _init(model, x[:2])
  params, stats = variables["params"], variables.get("vq_stats", {})
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def loss_fn(p, batch):
    (recon, _, aux) = model.apply({"params": p, "vq_stats": stats}, batch, train=False)
    return vt.feature_reconstruction_loss(recon, batch, CFG)["loss"] + aux["loss"]

  @jax.jit
  def step(p, o, batch):
    loss, g = jax.value_and_grad(loss_fn)(p, batch)
    u, o = tx.update(g, o)
    return optax.apply_updates(p, u), o, loss

  first = float(loss_fn(params, x))
  for i in range(200):
    params, opt, _ = step(params, opt, x[(i * 32) % 256:(i * 32) % 256 + 32])
  recon, _, _ = model.apply({"params": params, "vq_stats": stats}, x, train=False)
  cosine = float(vt.feature_reconstruction_loss(recon, x, CFG)["cosine"])
  assert float(loss_fn(params, x)) < 0.5 * first
  assert cosine > 0.8


@pytest.mark.slow
def test_pixel_vq_baseline_shapes_and_learning():
  cfg = pixel_vq.PixelVQConfig(image_size=16, width=16, downsample=2, codebook_size=32,
                               code_dim=8)
  model = pixel_vq.PixelVQTokenizer(cfg)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (8, 1, 1, 3)) * np.ones((8, 16, 16, 3)), jnp.float32)
  variables = _init(model, images[:1])
  recon, ids, _ = model.apply(variables, images, train=False)
  assert recon.shape == images.shape and ids.shape == (8, cfg.num_tokens) == (8, 16)
  np.testing.assert_allclose(model.apply(variables, ids, method=pixel_vq.PixelVQTokenizer.decode),
                             recon, atol=1e-5)
  params, stats = variables["params"], variables.get("vq_stats", {})
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def loss_fn(p):
    r, _, aux = model.apply({"params": p, "vq_stats": stats}, images, train=False)
    return pixel_vq.pixel_loss(r, images)["loss"] + aux["loss"]

  step = jax.jit(lambda p, o: (lambda l, g: (l, *tx.update(g, o)))(*jax.value_and_grad(loss_fn)(p)))
  first = float(loss_fn(params))
  for _ in range(100):
    loss, updates, opt = step(params, opt)
    params = optax.apply_updates(params, updates)
  assert float(loss_fn(params)) < 0.5 * first


def test_tokenizer_encode_compiles_for_tpu_with_the_fused_lookup():
  pytest.importorskip("libtpu")
  from unimodal_jax import aot, sharding
  _, devices = aot.topology_devices("v5e:2x2")
  mesh = sharding.make_mesh({"data": -1}, devices)
  cfg = vt.SemanticTokenizerConfig(feature_dim=256, num_tokens=64, codebook_size=4096,
                                   code_dim=128)
  model = vt.SemanticTokenizer(cfg)
  x = jax.ShapeDtypeStruct((8, 64, 256), jnp.float32, sharding=sharding.batch_sharding(mesh, 3))
  variables = jax.eval_shape(
      lambda f: nn.meta.unbox(model.init(jax.random.key(0), f, train=False)), x)
  encode = jax.jit(lambda v, f: model.apply(v, f, method=vt.SemanticTokenizer.encode))
  with sharding.activation_sharding(mesh):
    hlo = encode.lower(variables, x).compile().as_text()
  assert "tpu_custom_call" in hlo  # the Mosaic kernel, not an XLA N x K argmin


def test_paper_scale_tokenizer_config_has_the_papers_shape():
  """experiments/illume/tokenizer.py: 256 tokens per image from the ViT-L/14 tower's 16 x 16
  patches, 16,384 codes, and SD as the pixel decoder: an SD-2.1-shaped U-Net on the VAE's
  64 x 64 x 4 latents of 512 px, cross-attending to the 256 reconstructed 1024-d features (built
  abstractly: no memory is allocated)."""
  from experiments.illume import tokenizer as paper
  from unimodal_jax.models import unet, vae
  tok_cfg, unet_cfg, vae_cfg = paper.model_configs(paper.get_config())
  assert (tok_cfg.num_tokens, tok_cfg.codebook_size, tok_cfg.feature_dim) == (256, 16_384, 1024)
  feats = jnp.zeros((2, 256, 1024))
  tok = vt.SemanticTokenizer(tok_cfg)
  variables = jax.eval_shape(lambda: tok.init(jax.random.key(0), feats))
  ids = jax.eval_shape(lambda v: tok.apply(v, feats, method=vt.SemanticTokenizer.encode),
                       variables)
  assert ids.shape == (2, 256) and jnp.issubdtype(ids.dtype, jnp.integer)
  images = jnp.zeros((2, 512, 512, 3))
  autoencoder = vae.VAE(vae_cfg)
  vae_params = jax.eval_shape(lambda: autoencoder.init(jax.random.key(0), images))
  mean, _ = jax.eval_shape(lambda p: autoencoder.apply(p, images, method="encode"), vae_params)
  assert mean.shape == (2, 64, 64, 4)
  decoder = unet.UNet(unet_cfg)
  params = jax.eval_shape(lambda z: decoder.init(jax.random.key(0), z, jnp.zeros((2,)), feats),
                          mean)
  out = jax.eval_shape(lambda p, z: decoder.apply(p, z, jnp.zeros((2,)), feats), params, mean)
  assert out.shape == (2, 64, 64, 4)
  # The codebook (an EMA statistic here, not a param): 16,384 codes of 32 dims.
  assert (16_384, 32) in [leaf.shape for leaf in jax.tree.leaves(variables)]
  with pytest.raises(ValueError, match="unknown variant"):
    paper.get_config("micro")


def test_codec_quantizes_the_encoder_layer_its_config_names():
  """ImageCodec.tokenize reads the ViT hidden state named by the tokenizer's encoder_layer (1:
  after the first block), not the last one: its ids are the tokenizer's encode of exactly those
  features, which differ from the last layer's."""
  from unimodal_jax.models import image_codec, vit
  vision = vit.VitConfig(image_size=16, patch_size=4, hidden_size=24, intermediate_size=32,
                         num_layers=2, num_heads=2)
  tower = vit.VisionTransformer(vision)
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  vision_params = nn.meta.unbox(tower.init(jax.random.key(1), vit.normalize(images)))["params"]
  out = tower.apply({"params": vision_params}, vit.normalize(images), return_hidden_states=True)
  skip = int(vision.class_token)
  first, last = out.hidden_states[1][:, skip:], out.last_hidden_state[:, skip:]
  assert out.layer(1) is out.hidden_states[1] and out.layer(-1) is out.last_hidden_state
  tok_cfg = vt.SemanticTokenizerConfig(feature_dim=24, num_tokens=16, codebook_size=64,
                                       code_dim=8, decoder_hidden=32, decoder_layers=1,
                                       decoder_heads=2, quantizer={"l2_normalized": True},
                                       encoder_layer=1)
  tokenizer = vt.SemanticTokenizer(tok_cfg)
  tok_vars = _init(tokenizer, first)
  codec = image_codec.ImageCodec(vision, vision_params, tok_cfg, tok_vars, None, None)
  want = tokenizer.apply(tok_vars, first, method=vt.SemanticTokenizer.encode)
  np.testing.assert_array_equal(codec.tokenize(images), want)
  np.testing.assert_allclose(codec._features(images), first, atol=1e-6)
  assert float(jnp.abs(codec._features(images) - last).max()) > 1e-2
  assert vt.SemanticTokenizerConfig.from_dict(tok_cfg.to_dict()).encoder_layer == 1


def test_codec_writes_flat_background_patches_as_a_plain_background_image_does():
  """With background_rgb set, a patch that is that colour in every pixel gets the id an image of
  only that colour gets at the same position; every other patch, one stray pixel included, keeps
  the tokenizer's own id. The tokenizer is stood in for by ids that depend on the whole image,
  as a contextual encoder's do, so the two kinds of id differ."""
  from unimodal_jax.models import image_codec, vit

  class ContextualIds(image_codec.ImageCodec):
    def _tokenizer_ids(self, images, batch=256):
      total = images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)
      return ((total[:, None] + np.arange(16)) % 4096).astype(np.int32)

  rgb = (235, 235, 228)
  rng = np.random.default_rng(3)
  images = np.broadcast_to(np.asarray(rgb, np.uint8), (6, 16, 16, 3)).copy()
  for i in range(6):  # objects: random pixels over a few random 4 x 4 patches
    for _ in range(1 + i % 3):
      y, x = rng.integers(0, 4, 2) * 4
      images[i, y:y + 4, x:x + 4] = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  images[0, 13, 2] = (0, 0, 0)  # one stray pixel in patch (3, 0) of image 0
  vision = vit.VitConfig(image_size=16, patch_size=4, hidden_size=24, intermediate_size=32,
                         num_layers=2, num_heads=2)
  tok_cfg = vt.SemanticTokenizerConfig(feature_dim=24, num_tokens=16, codebook_size=4096)
  plain = ContextualIds(vision, None, tok_cfg, None, None, None)
  codec = ContextualIds(vision, None, tok_cfg, None, None, None, background_rgb=rgb)
  own, ids = plain.tokenize(images), codec.tokenize(images)
  background = plain.tokenize(np.broadcast_to(np.asarray(rgb, np.uint8), (1, 16, 16, 3)))
  background = np.broadcast_to(background, ids.shape)
  flat = np.array([[(images[i, r * 4:r * 4 + 4, c * 4:c * 4 + 4] == rgb).all()
                    for r in range(4) for c in range(4)] for i in range(6)])
  assert not flat[0, 12] and flat.mean() > 0.5
  np.testing.assert_array_equal(image_codec.flat_patches(images, 16, rgb), flat)
  np.testing.assert_array_equal(ids[flat], background[flat])
  np.testing.assert_array_equal(ids[~flat], own[~flat])
  assert (own[flat] != background[flat]).all()
  with pytest.raises(ValueError, match="15 tokens do not tile 16x16"):
    image_codec.flat_patches(images, 15, rgb)
