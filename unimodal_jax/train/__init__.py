"""Training: the one loop (fit.py) every model trains through, its state, step, optimizer
groups, checkpoints and metrics; loop.py (LLM stages), contrastive.py (CLIP) and tokenizer.py
(the semantic tokenizer and its pixel decoder) build on it."""
