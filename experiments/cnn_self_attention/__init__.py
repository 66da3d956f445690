"""A small CNN with and without self-attention (SAGAN's SelfAttention2D) where global context matters

``python -m experiments.cnn_self_attention``
"""
