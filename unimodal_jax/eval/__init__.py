"""Judges that score outputs without a human: the shapes world's judge (shapes_judge.py) reads
the objects back from any image and applies GenEval's rules to them."""
