"""ILLUME's progressive training, Table 5 (../shared/reference/papers.md): what each stage trains,
at which learning rate, with which batch and for how many steps. The paper configs
(stage1.py, stage2.py, stage3.py) and the tiny ones (experiments/tiny/illume_shapes.py) take
their trainable/frozen split from here, so both freeze exactly what the paper freezes.

Parts (models/illume.py GROUP_PATTERNS): vision_encoder, adapter, vision_embed_head (the image
codes' embedding and head rows), llm (the decoder: text embedding, layers, text head).
"""
from unimodal_jax.models.illume import GROUP_PATTERNS

# Stage -> {part: learning rate, or None for frozen}, batch, steps.
STAGES = {
    1: dict(  # visual embedding initialization
        learning_rates={"adapter": 1.0e-3, "vision_embed_head": 2.0e-4, "llm": None,
                        "vision_encoder": None},
        batch=256, steps=5_000),
    2: dict(  # unified image-text alignment; the vision embed & head are part of the LLM here
        learning_rates={"adapter": 5.0e-5, "llm": 5.0e-5, "vision_embed_head": 5.0e-5,
                        "vision_encoder": None},
        batch=1024, steps=15_000),
    3: dict(  # supervised fine-tuning
        learning_rates={"vision_encoder": 2.0e-6, "llm": 2.0e-5, "adapter": 2.0e-5,
                        "vision_embed_head": 2.0e-5},
        batch=1024, steps=8_000),
}


def optimizer_groups(stage: int, lr_scale: float = 1.0, learning_rates: dict | None = None):
  """config.optimizer.groups for a stage: Table 5's frozen parts frozen and the others at their
  learning rate (times lr_scale; or `learning_rates[part]` where given, for tiny models trained
  from scratch). A part frozen in Table 5 stays frozen whatever the overrides say."""
  if stage not in STAGES:
    raise ValueError(f"ILLUME stage {stage}; Table 5 has stages {sorted(STAGES)}")
  overrides = dict(learning_rates or {})
  unknown = sorted(set(overrides) - set(GROUP_PATTERNS))
  if unknown:
    raise ValueError(f"learning_rates for unknown part(s) {unknown}; parts: {sorted(GROUP_PATTERNS)}")
  groups = {}
  for part, lr in STAGES[stage]["learning_rates"].items():
    if lr is None:
      groups[part] = {"pattern": GROUP_PATTERNS[part], "frozen": True}
    else:
      groups[part] = {"pattern": GROUP_PATTERNS[part],
                      "learning_rate": float(overrides.get(part, lr * lr_scale))}
  return groups
