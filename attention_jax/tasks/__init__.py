"""Tasks shared by more than one experiment: their data, evaluation and baseline models.

* :mod:`attention_jax.tasks.dates_translation` -- the multilingual dates translation task of
  ``experiments/seq2seq`` and ``experiments/transformer_seq2seq``: tokenizers, batches, the RNN
  encoder-decoder baseline (config, training, decoding), scores and the accuracy-by-length plot.
"""
