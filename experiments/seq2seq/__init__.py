"""Seq2seq with and without attention on the dates translation task: the bottleneck, shown

``python -m experiments.seq2seq``
"""
