"""Task pipelines (breast density, chest X-ray pneumonia, brain-tumour segmentation).

Each pipeline declares its series-selection rules, MONAI transforms, network, outputs and
metrics; a shared runner drives any of them. The pipelines arrive with their own issues; this
package holds no code yet.
"""
