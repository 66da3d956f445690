"""The Transformer encoder-decoder on the dates translation task, next to the RNN with attention

``python -m experiments.transformer_seq2seq``
"""
