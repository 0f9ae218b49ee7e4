"""imdb-lightning: train and compare recurrent sentiment encoders on IMDB with PyTorch Lightning."""

__version__ = "0.1.0"

from .inference import Predictor, load  # noqa: E402

__all__ = ["Predictor", "load", "__version__"]
