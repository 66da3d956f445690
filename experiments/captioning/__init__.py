"""Image captioning with soft attention (Show, Attend and Tell) on the shapes captions dataset

``python -m experiments.captioning``
"""
