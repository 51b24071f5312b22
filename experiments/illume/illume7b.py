"""ILLUME at paper scale: Vicuna-7B with a vision adapter, a CLIP-L/14-shaped vision encoder at
ILLUME's base resolution 448 (ILLUME's UNIT encoder is CLIP-like) whose 32 x 32 patch grid is
merged 2 x 2 into 256 tokens per view, and 16,384 image codes at 256 tokens per image
(../shared/reference/papers.md). Stage 3 reads large images at high resolution: a global view
plus up to 9 slices of 448 px, 256 tokens each (data/slicing.py). The three stage configs build
on this.
"""
import ml_collections

from experiments.illume import table5, vicuna7b

BASE_RESOLUTION = 448
TOKEN_MERGE = 2  # (448 px / 14 px patches / 2)**2 = 16 x 16 tokens per view
TOKENS_PER_IMAGE = 256
MAX_IMAGES_PER_ROW = 8  # images read per packed 4,096-token row
MAX_SLICES = 9  # stage 3's high-resolution understanding
MAX_VIEWS_PER_ROW = 16  # stage 3: one image of 9 slices + its global view, and 6 more views


def get_config(stage: int, arg=None):
  del arg
  base = vicuna7b.get_config()
  llm = base.model.to_dict()
  llm["vocab_size"] = vicuna7b.TEXT_VOCAB + vicuna7b.SPECIAL_TOKENS  # text + specials
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      kind="illume",
      llm=llm,
      vision=dict(image_size=BASE_RESOLUTION, patch_size=14, hidden_size=1024, intermediate_size=4096,
                  num_layers=24, num_heads=16, hidden_act="quick_gelu", class_token=True,
                  pre_layernorm=True, post_layernorm="pooled", pooling="cls",
                  dtype="bfloat16", remat_policy="full"),
      image_codes=vicuna7b.VISION_CODES, adapter_hidden=0, feature_layer=-2,
      token_merge=TOKEN_MERGE))
  c.mesh = base.mesh
  c.seq_len = 4096
  spec = table5.STAGES[stage]
  c.global_batch = spec["batch"]
  c.data = ml_collections.ConfigDict(dict(
      kind="documents",
      # Shard directories written by tools/write_shards.py: set them on the command line, e.g.
      # --config.data.sources='{"llava": {"path": "gs://bucket/llava558k", "weight": 1.0}}'
      sources={}, eval_sources={}, tokenizer="", vocab_size=vicuna7b.TEXT_VOCAB,
      image_codes=vicuna7b.VISION_CODES,
      format=dict(image_size=BASE_RESOLUTION, tokens_per_image=TOKENS_PER_IMAGE,
                  max_images=MAX_VIEWS_PER_ROW if stage == 3 else MAX_IMAGES_PER_ROW,
                  max_slices=MAX_SLICES if stage == 3 else 0, text_dropout=0.1),
      num_workers=8, strict=False, cache_dir=""))
  c.train = ml_collections.ConfigDict(dict(
      steps=spec["steps"], seed=0, grad_accum_steps=1, z_loss_weight=0.0,
      log_every=10, eval_every=1000, eval_batches=8,
      checkpoint_every=500, keep_checkpoints=3, async_checkpointing=True,
      max_consecutive_nonfinite=10, init_from="", init_parts={}, peak_flops_per_device=0.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.0,  # every part has its group below
      warmup_steps=150, schedule="cosine", end_lr_ratio=0.0,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_grad_norm=1.0,
      groups=table5.optimizer_groups(stage)))
  return c
