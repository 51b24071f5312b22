"""Procedurally generated worlds: synthetic data whose ground truth is known exactly, so tiny
multimodal experiments can be trained on them and their outputs scored without a human or a
learned judge (see shapes.py and unimodal_jax/eval/shapes_judge.py)."""
