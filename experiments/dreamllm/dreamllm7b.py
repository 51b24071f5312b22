"""DreamLLM at paper scale: Vicuna-7B, a frozen CLIP ViT-L/14 at 224 px read through its
penultimate layer (256 patch tokens, a linear projector 1024 -> 4096), 64 dream queries whose
states condition a frozen Stable Diffusion 2.1-base U-Net (through a bias-free projector
4096 -> 1024) drawing 512 px images in its VAE's 64 x 64 x 4 latents; 2,048-token rows
(../shared/reference/papers.md, "DreamLLM"). The three stage configs build on this.

The batch is ours (the paper and the official configs fix none: per-device 16 on an unstated
number of GPUs): 256 rows of 2,048 tokens on a v5p-256, each row packing up to 8 images drawn
and 8 read. Steps: one pass over the stage's data at about 8 examples per row in stage I and
2 documents per row after.
"""
import ml_collections

from experiments.dreamllm import sd21_base, stages
from experiments.illume import vicuna7b

SEQ_LEN = 2048
GLOBAL_BATCH = 256
CLIP_SIZE = 224
DREAM_SIZE = 512
DREAM_QUERIES = 64
MAX_IMAGES_PER_ROW = 8  # images read per packed row
MAX_DREAMS_PER_ROW = 8  # images drawn per packed row
EXAMPLES_PER_ROW = {"1": 8, "1_comprehension": 8, "2": 2, "3": 2}


def get_config(stage, arg=None):
  del arg
  spec = stages.STAGES[str(stage)]
  base = vicuna7b.get_config()
  llm = base.model.to_dict()
  llm.update(vocab_size=vicuna7b.TEXT_VOCAB + vicuna7b.SPECIAL_TOKENS, max_seq_len=SEQ_LEN)
  unet = dict(sd21_base.SD21_BASE_UNET, condition_length=DREAM_QUERIES, remat_policy="full",
              param_dtype="bfloat16", dtype="bfloat16")  # frozen: bf16 weights suffice
  unet.pop("kind")
  vae = dict(sd21_base.SD21_BASE_VAE, param_dtype="bfloat16", dtype="bfloat16")
  vae.pop("kind")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      kind="dreamllm", llm=llm,
      vision=dict(image_size=CLIP_SIZE, patch_size=14, hidden_size=1024, intermediate_size=4096,
                  num_layers=24, num_heads=16, hidden_act="quick_gelu", class_token=True,
                  pre_layernorm=True, post_layernorm="pooled", pooling="cls",
                  param_dtype="bfloat16", dtype="bfloat16", remat_policy="full"),
      unet=unet, vae=vae, num_dream_queries=DREAM_QUERIES, feature_layer=-2,
      dream_image_size=DREAM_SIZE,
      schedule={k: v for k, v in sd21_base.SD21_BASE_SCHEDULE.items()}, min_snr_gamma=0.0))
  c.mesh = base.mesh
  c.seq_len = SEQ_LEN
  c.global_batch = GLOBAL_BATCH
  steps = max(1, spec["examples"] // (GLOBAL_BATCH * EXAMPLES_PER_ROW[str(stage)]))
  c.data = ml_collections.ConfigDict(dict(
      kind="documents",
      # Shard directories written by tools/write_shards.py, set on the command line.
      sources={}, eval_sources={}, tokenizer="", vocab_size=vicuna7b.TEXT_VOCAB, image_codes=0,
      format=dict(image_size=CLIP_SIZE, tokens_per_image=(CLIP_SIZE // 14) ** 2,
                  max_images=MAX_IMAGES_PER_ROW, dream_queries=DREAM_QUERIES,
                  dream_image_size=DREAM_SIZE, max_dream_images=MAX_DREAMS_PER_ROW,
                  # The official code drops no captions (its condition dropout is unset);
                  # guidance's null is the empty prompt's queries, which this teaches.
                  text_dropout=0.0),
      num_workers=8, strict=False, cache_dir=""))
  c.train = ml_collections.ConfigDict(dict(
      steps=steps, seed=0, grad_accum_steps=1, z_loss_weight=0.0, **stages.loss_weights(stage),
      log_every=10, eval_every=1000, eval_batches=8, checkpoint_every=500, keep_checkpoints=3,
      async_checkpointing=True, max_consecutive_nonfinite=10, init_from="", init_parts={},
      peak_flops_per_device=0.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.0,  # every part has its group
      warmup_steps=max(1, round(stages.WARMUP_RATIO * steps)), schedule="cosine",
      end_lr_ratio=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_grad_norm=1.0,
      groups=stages.optimizer_groups(stage)))
  return c
