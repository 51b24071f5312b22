"""DreamLLM's three training stages (../shared/reference/papers.md, "DreamLLM"; the official
configs for what the paper leaves out): what each stage trains, at which learning rate, the LM and
diffusion loss weights, and the data it reads. The paper-scale configs (stage1.py, stage2.py,
stage3.py) and the tiny main job (experiments/tiny/dreamllm_shapes.py) take their trainable /
frozen split and loss weights from here, so both freeze exactly what DreamLLM freezes.

Parts (models/dreamllm.py GROUP_PATTERNS): llm, vision_encoder, vision_projector, dream_queries,
condition_projector, unet, vae. The encoder, the U-Net and the VAE are frozen in every stage.

Stage I is two runs in the official code: creation-only (the queries and the condition projector
learn to drive the frozen U-Net through the frozen LLM: LM weight 0) and comprehension-only (the
vision projector learns to feed the LLM: diffusion weight 0); their parts are then merged.
"""
from unimodal_jax.models.dreamllm import GROUP_PATTERNS

ALWAYS_FROZEN = ("vision_encoder", "unet", "vae")
STAGES = {
    "1": dict(  # alignment, creation-only: ~30M pairs as text-to-image
        learning_rate=2e-3, trainable=("dream_queries", "condition_projector"),
        lm_loss_weight=0.0, diffusion_loss_weight=1.0, tasks=("text_to_image",),
        examples=30_000_000),
    "1_comprehension": dict(  # alignment, comprehension-only: ~30M pairs as captioning
        learning_rate=2e-3, trainable=("vision_projector",),
        lm_loss_weight=1.0, diffusion_loss_weight=0.0, tasks=("caption",),
        examples=30_000_000),
    "2": dict(  # I-GPT: interleaved generative pretraining (MMC4) + pairs both ways
        learning_rate=2e-5,
        trainable=("llm", "vision_projector", "dream_queries", "condition_projector"),
        lm_loss_weight=1.0, diffusion_loss_weight=10.0,
        tasks=("interleaved", "text_to_image", "caption"), examples=4_000_000),
    "3": dict(  # supervised fine-tuning: instructions, conversations, pairs
        learning_rate=4e-5,
        trainable=("llm", "vision_projector", "dream_queries", "condition_projector"),
        lm_loss_weight=1.0, diffusion_loss_weight=10.0,
        tasks=("conversation", "interleaved", "text_to_image"), examples=120_000),
}
WARMUP_RATIO = 0.003  # of the stage's steps; AdamW (0.9, 0.999, 1e-8), weight decay 0, cosine


def _stage(stage) -> dict:
  if str(stage) not in STAGES:
    raise ValueError(f"DreamLLM stage {stage!r}; stages are {sorted(STAGES)}")
  return STAGES[str(stage)]


def optimizer_groups(stage, learning_rate: float | None = None, vae: bool = True) -> dict:
  """config.optimizer.groups for a stage: its trainable parts at its learning rate (or the given
  one, for tiny models), every other part frozen (no update, no optimizer state). vae=False for
  a model that draws pixels (it has no VAE group to freeze)."""
  spec = _stage(stage)
  lr = spec["learning_rate"] if learning_rate is None else learning_rate
  return {part: ({"pattern": pattern, "learning_rate": float(lr)} if part in spec["trainable"]
                 else {"pattern": pattern, "frozen": True})
          for part, pattern in GROUP_PATTERNS.items() if vae or part != "vae"}


def loss_weights(stage) -> dict:
  """config.train's lm_loss_weight and diffusion_loss_weight for a stage."""
  spec = _stage(stage)
  return {"lm_loss_weight": spec["lm_loss_weight"],
          "diffusion_loss_weight": spec["diffusion_loss_weight"]}
