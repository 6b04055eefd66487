"""QU-BraTS uncertainty scoring and ranking, and uncertainty-map estimation for segmentation
models. Generic over any model; never imports ``pipelines``. The scorer arrives with its own
issue; this package holds no code yet.
"""
