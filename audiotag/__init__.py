"""audiotag: the 10 most likely AudioSet labels for any audio, from one command."""

__version__ = "0.1.0"
__all__ = ["Tagger", "TagOptions", "Tag", "Category", "Prediction", "Segment", "__version__"]


def __getattr__(name):
    # Lazy, so `audiotag --help` does not import numpy and onnxruntime.
    if name in ("Tagger", "TagOptions", "Tag", "Category", "Prediction", "Segment"):
        from . import tagger
        return getattr(tagger, name)
    raise AttributeError(f"module 'audiotag' has no attribute {name!r}")
