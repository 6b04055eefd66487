"""medimg: a medical-imaging toolkit built on MONAI."""

__version__ = "0.1.0"
