"""Classify raw text from a checkpoint alone: `imdb_lightning.load(path).predict(texts)`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from .encoders import build_encoder
from .errors import UserError
from .model import SentimentClassifier
from .standalone import BATCH_SIZE, padded_batches


class Predictor:
    """A trained classifier with its tokenizer; `predict` returns P(positive) per text, in input order."""

    def __init__(self, model: SentimentClassifier, tokenizer: Tokenizer, max_length: int, truncation: str = "head"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.truncation = max_length, truncation

    @torch.inference_mode()
    def predict(self, texts: list[str], batch_size: int = BATCH_SIZE) -> list[float]:
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; wrap a single review as [text]")
        probs = np.empty(len(texts), dtype=np.float64)
        device = next(self.model.parameters()).device
        for rows, ids, lengths in padded_batches(self.tokenizer, texts, self.max_length, self.truncation, batch_size):
            logits = self.model(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device))
            probs[rows] = logits.float().sigmoid().cpu().numpy()
        return probs.tolist()


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True, and a clear error for anything that is not our checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, random bytes: all mean the same to a user
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    if not isinstance(ckpt, dict) or "encoder" not in ckpt.get("hyper_parameters", {}) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an imdb-lightning checkpoint (no encoder hyperparameters or weights)")
    if not any(isinstance(v, dict) and "tokenizer" in v for v in ckpt.values()):
        raise UserError(f"{path}: the checkpoint holds no tokenizer; it was not written by an imdb-lightning run")
    return ckpt


def load(path: str | Path, device: str = "cpu") -> Predictor:
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    data = next(v for v in ckpt.values() if isinstance(v, dict) and "tokenizer" in v)
    model = SentimentClassifier(build_encoder(hp["encoder"]), dropout=hp.get("dropout", 0.0))
    model.load_state_dict(ckpt["state_dict"])
    tokenizer = Tokenizer.from_str(data["tokenizer"])
    return Predictor(model.to(device), tokenizer, data["max_length"], data.get("truncation", "head"))
