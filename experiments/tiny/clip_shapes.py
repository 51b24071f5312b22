"""A small CLIP on the shapes and digits worlds, trained on a 2-core CPU in a few minutes.

    python -m unimodal_jax.train.contrastive --config=experiments/tiny/clip_shapes.py \
        --workdir=/tmp/clip_shapes

Renders 8,000 captioned shapes scenes and 3,000 captioned digit scans at 32 px, trains a
512-piece BPE tokenizer on the captions, then a 0.32M-parameter CLIP (ViT 3 x 96 on 4 x 4
patches of 8 px with a class token; causal text transformer 1 x 64 pooled at EOS; 64-d
projections) for 2,000 steps of 128 pairs, 3/4 of each batch in groups of captions that differ
only in shape words. Expected (2 CPU cores: 160-200 s with data and compilation, about 5
minutes when the cores are busy with other work), DIR/results.json `zero_shot`:

    shape  0.76 on 529 held-out single-object scenes   (chance 0.25, majority class 0.38)
    color  1.00 on the same                            (chance 0.17, majority class 0.25)
    count  0.60 on 2,000 held-out scenes of 1-4 shapes (chance 0.25, majority class 0.27)
    digit  0.57 on the 270 'judge_test' scans          (chance 0.10, majority class 0.14)

Shape comes last: 0.30 at step 500, 0.45 at 1,000, 0.63 at 1,500 (the zero-shot lines every
`eval.every` steps show it). Trained on random batches only, shape stayed at chance (0.20 after
1,500 steps) while color, count and digit were learned.

`:patch4` is the same CLIP on 8 x 8 patches of 4 px: 64 feature tokens per image, the encoder of
the tokenizer experiment (experiments/tiny/tokenizer_shapes.py), whose shapes need them. Measured
(2 cores, 783 s with another job on the cores): shape 0.815, color 0.989, count 0.555, digit 0.570.

`--config=experiments/tiny/clip_shapes.py:micro` is a seconds-long variant for tests and smoke
runs (tiny towers, a few hundred examples, 30 steps); its accuracies mean nothing.
The evaluation protocol is in unimodal_jax/train/contrastive.py's docstring.
"""
import math

import ml_collections


def get_config(arg=None):
  if arg not in (None, "", "micro", "patch4"):
    raise ValueError(f"experiments/tiny/clip_shapes.py: unknown variant {arg!r} "
                     "(use 'micro', 'patch4' or nothing)")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      kind="clip",
      vision=dict(  # a CLIP-layout ViT: class token, pre-norm, post-norm on the pooled vector
          image_size=32, patch_size=8, hidden_size=96, intermediate_size=192, num_layers=3,
          num_heads=4, num_channels=3, layer_norm_eps=1e-5, hidden_act="quick_gelu",
          class_token=True, patch_bias=False, pre_layernorm=True, post_layernorm="pooled",
          pooling="cls", initializer_range=0.02, param_dtype="float32", dtype="float32",
          remat_policy="none"),
      text=dict(  # CLIP's text tower layout: causal, the EOS token pooled
          vocab_size=512, max_len=24, hidden_size=64, intermediate_size=128, num_layers=1,
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
      steps=2000, batch_size=128, seed=0, log_every=100, duplicates_positive=True,
      # 3/4 of each batch: groups of 8 captions that differ only in shape words (see
      # contrastive.BatchSampler); without them the towers learn color and count but no shape.
      hard_negative_fraction=0.75, hard_negative_group=8, hard_negative_words="shape",
      # train/fit.py: a checkpoint every 500 steps (a kill loses at most that), 5 NaN/inf
      # steps in a row stop the run.
      checkpoint_every=500, keep_checkpoints=1, max_consecutive_nonfinite=5,
      async_checkpointing=False))
  c.eval = ml_collections.ConfigDict(dict(every=500, batch_size=500, count_prompt_scenes=32))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=50, schedule="cosine", end_lr_ratio=0.05,
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, clip_grad_norm=1.0,
      # No decay on norms, biases, embeddings tables of positions and the temperature.
      groups=ml_collections.ConfigDict(dict(no_decay=dict(
          pattern=r".*(bias|scale|position_embedding|class_embedding|logit_scale)",
          weight_decay=0.0)))))
  if arg == "patch4":  # 4 px patches: 64 feature tokens per image (the tokenizer's encoder)
    c.model.vision.patch_size = 4
  if arg == "micro":
    c.model.vision.update(patch_size=8, hidden_size=32, intermediate_size=64, num_layers=1)
    c.model.text.update(hidden_size=32, intermediate_size=64, num_layers=1)
    c.model.projection_dim = 32
    c.data.update(shapes_train=192, digits_train=64, shapes_eval=64)
    c.train.update(steps=30, batch_size=32, log_every=5, checkpoint_every=10)
    c.eval.update(batch_size=64, count_prompt_scenes=4)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  return c
