"""Continual and federated learning across institutions: EWC with batch-norm statistics
(Gupta et al. 2020/2021) and federated training (Roth et al. 2020). Generic over any classifier
with BN layers; never imports ``pipelines``. The methods arrive with their own issues; this
package holds no code yet.
"""
