"""A character-level Transformer language model, against a bigram baseline

``python -m experiments.transformer_lm``
"""
