"""headflow: head-level analysis of image-to-text information flow in LVLMs."""
__version__ = "0.1.0"
