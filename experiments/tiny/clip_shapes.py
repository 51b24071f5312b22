"""A small CLIP on the shapes and digits worlds, trained on a 2-core CPU in a few minutes.

    python -m unimodal_jax.train.contrastive --config=experiments/tiny/clip_shapes.py --workdir=/tmp/clip_shapes

EXPECTED

`--config=experiments/tiny/clip_shapes.py:micro` is a seconds-long variant for tests and smoke
runs (tiny towers, a few hundred examples, 30 steps); its accuracies mean nothing.
The evaluation protocol is in unimodal_jax/train/contrastive.py's docstring.
"""
import math

import ml_collections


def get_config(arg=None):
  if arg not in (None, "", "micro"):
    raise ValueError(f"experiments/tiny/clip_shapes.py: unknown variant {arg!r} "
                     "(use 'micro' or nothing)")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vision=dict(  # a CLIP-layout ViT: class token, pre-norm, post-norm on the pooled vector
          image_size=32, patch_size=8, hidden_size=96, intermediate_size=192, num_layers=3,
          num_heads=4, num_channels=3, layer_norm_eps=1e-5, hidden_act="quick_gelu",
          class_token=True, patch_bias=False, pre_layernorm=True, post_layernorm="pooled",
          pooling="cls", initializer_range=0.02, param_dtype="float32", dtype="float32",
          remat_policy="none"),
      text=dict(  # CLIP's text tower layout: causal, the EOS token pooled
          vocab_size=512, max_len=24, hidden_size=64, intermediate_size=128, num_layers=2,
          num_heads=4, layer_norm_eps=1e-5, hidden_act="quick_gelu", causal=True, pooling="eos",
          pad_id=0, initializer_range=0.02, param_dtype="float32", dtype="float32"),
      projection_dim=64,
      logit_scale_init=math.log(1 / 0.07),
      logit_scale_max=100.0,
  ))
  c.data = ml_collections.ConfigDict(dict(
      shapes_seed=0, shapes_train=8000,  # shapes.make_document(seed, i, "caption")
      digits_seed=0, digits_train=3000,  # digits 'train' split (1,078 scans), several captions each
      eval_seed=1, shapes_eval=2000,  # held-out shapes stream: ~500 single-object scenes
      digits_eval_split="judge_test"))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=128, seed=0, log_every=50, duplicates_positive=True,
      hard_negative_fraction=0.5, hard_negative_group=8))
  c.eval = ml_collections.ConfigDict(dict(every=0, batch_size=500, count_prompt_scenes=32))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=50, schedule="cosine", end_lr_ratio=0.05,
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, clip_grad_norm=1.0,
      # No decay on norms, biases, embeddings tables of positions and the temperature.
      groups=ml_collections.ConfigDict(dict(no_decay=dict(
          pattern=r".*(bias|scale|position_embedding|class_embedding|logit_scale)",
          weight_decay=0.0)))))
  if arg == "micro":
    c.model.vision.update(patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1)
    c.model.text.update(hidden_size=32, intermediate_size=64, num_layers=1)
    c.model.projection_dim = 32
    c.data.update(shapes_train=192, digits_train=64, shapes_eval=64)
    c.train.update(steps=30, batch_size=32, log_every=5)
    c.eval.update(batch_size=64, count_prompt_scenes=4)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  return c
