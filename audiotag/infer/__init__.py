"""Samples to predictions: frontend (log-mel, as upstream's PyTorch), model (the onnxruntime session), windows and
clip (how a clip is cut and its windows combined), events, batcher (one model for many producers), results (what
tagging gives) and tagger (``Tagger``: samples, a decoded clip or a whole input in, a prediction out)."""
