"""imdb-lightning: train and compare recurrent sentiment encoders on IMDB with PyTorch Lightning."""

import os

__version__ = "0.1.0"

# oneDNN keeps a compiled LSTM primitive per input shape; length buckets make hundreds of shapes,
# and the default cache (1024 entries) grew a BiLSTM epoch to ~3 GB here. 16 entries cost no speed.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

from .inference import Predictor, load  # noqa: E402

__all__ = ["Predictor", "load", "__version__"]
