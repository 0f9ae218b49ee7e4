"""imdb-lightning: train and compare recurrent sentiment encoders on IMDB with PyTorch Lightning.

Folders show the design, and imports run one way (a test walks them):
errors, runs, callbacks <- data <- models <- checks, experiment, training, serve <- tools <- cli. The lab beside it
(imdb_lightning_lab: bench, memory, forecast) builds on it and is never imported by it.
"""

import os

__version__ = "0.2.0"

# oneDNN keeps a compiled LSTM primitive per input shape; length buckets make hundreds of shapes,
# and the default cache (1024 entries) grew a BiLSTM epoch to ~3 GB here. 16 entries cost no speed.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

__all__ = ["Predictor", "load", "__version__"]


def __getattr__(name: str):
    # `imdb_lightning.load(...)` without importing torch and Lightning for every command's start
    if name in ("Predictor", "load"):
        from .serve import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'imdb_lightning' has no attribute {name!r}")
