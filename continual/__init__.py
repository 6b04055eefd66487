"""Continual and federated learning across institutions: EWC with batch-norm statistics
(Gupta et al. 2020/2021) and federated training (Roth et al. 2020). Generic over any classifier
with BN layers; never imports ``pipelines``.

Modules: :mod:`continual.bn` (BN statistics snapshot, freezing, BN-affine training,
post-conditions), :mod:`continual.ewc` (Fisher diagonal at the old site, EWC penalty),
:mod:`continual.lwf` (Learning without Forgetting), :mod:`continual.metrics` (forgetting
metrics), :mod:`continual.expand` (the arms of a domain-expansion experiment).
"""
