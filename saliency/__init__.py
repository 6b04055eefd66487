"""Saliency-map trustworthiness audits and trainable attention maps (Arun et al. 2020; Aggarwal et al. 2020).

Generic over any torch classifier; never imports ``pipelines``. ``methods`` (the eight methods),
``postprocess``, ``xrai``, ``cam``; the audit: ``protocol`` (presets), ``controls`` (model-blind
maps), ``criteria`` (AUPRC, SSIM, tests), ``randomization``, ``audit_maps``, ``audit_rows``,
``verdicts``, ``audit`` (the run), ``audit_report``; ``attention`` (the trainable gate) and
``localizer`` (the supervised baseline).
"""
