"""Three ways of processing sequences: an RNN, a 1D CNN and self-attention on one long-range task

``python -m experiments.sequence_processing``
"""
