"""sublearn: a laboratory for subliminal learning."""

__version__ = "0.1.0"
