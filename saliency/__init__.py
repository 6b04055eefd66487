"""Saliency-map trustworthiness audits and trainable attention maps (Arun et al. 2020;
Aggarwal et al. 2020). Generic over any torch classifier; never imports ``pipelines``.
The methods arrive with their own issues; this package holds no code yet.
"""
