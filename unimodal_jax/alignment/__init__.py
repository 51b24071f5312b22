"""ILLUME's self-enhancing multimodal alignment (self_assessment.py): the model draws, its drawings
are assessed against their prompts, and the assessments become stage-3 dialogues."""
