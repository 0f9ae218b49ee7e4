"""LanguageModel: the classifier's own encoder trained to predict the next word, for fine-tuning.

The embedding and recurrent layers are a `RecurrentEncoder`'s, so `fit --model.pretrained`
copies them into the classifier one to one. The output layer reuses the embedding matrix (tied
weights, Press & Wolf 2017): a 30k-word softmax then adds no parameters, only a projection from
the hidden size to the embedding size when the two differ.
"""

from __future__ import annotations

import math
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from ..errors import ConfigError, UserError
from .base import NonFiniteLossError, sized_by_steps
from .checkpoints import expect_kind, read_checkpoint
from .encoders import RecurrentEncoder, encoder_spec


class LanguageModel(L.LightningModule):
    """Next-word prediction over a unidirectional `RecurrentEncoder`'s embedding and layers.

    Args:
        encoder: the recurrent encoder to pretrain (its pooling is unused here).
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: LR scheduler factory; one with `total_steps` (OneCycleLR) is sized to the run.
    """

    def __init__(self, encoder: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__()
        if not isinstance(encoder, RecurrentEncoder):
            raise ConfigError(f"model.encoder: a language model needs a RecurrentEncoder, got {type(encoder).__name__}")
        if encoder.bidirectional:
            raise ConfigError("model.encoder.bidirectional: a language model reads left to right; use bidirectional: false")
        self.encoder, self.optimizer, self.scheduler = encoder, optimizer, scheduler
        # (time, batch, hidden) -> (time, batch, embed), where the tied output matrix lives
        self.project = nn.Linear(encoder.hidden_size, encoder.embed_dim) if encoder.hidden_size != encoder.embed_dim \
            else nn.Identity()
        self.output_bias = nn.Parameter(torch.zeros(encoder.vocab_size))
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.hparams["encoder"], self.hparams["task"] = encoder_spec(encoder), "language_model"
        self._state: dict[str, Optional[list]] = {"train": None, "val": None}  # carried between windows

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """input_ids (batch, time) -> next-word logits (time, batch, vocab), and each layer's final state."""
        enc = self.encoder
        x = enc.embedding_dropout(enc.embed(input_ids))  # (time, batch, embed)
        state = state or [None] * enc.num_layers
        new_state = []
        for index, (rnn,) in enumerate(enc.layers):
            if index:
                x = enc.layer_dropout(x)
            x, layer_state = rnn(x, state[index])  # (time, batch, hidden)
            new_state.append(layer_state)
        x = enc.layer_dropout(x)
        logits = F.linear(self.project(x), enc.embedding.weight, self.output_bias)  # (time, batch, vocab)
        return logits, new_state

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        state = self._state[stage]
        if state is not None and _batch_of(state) != batch["input_ids"].shape[0]:
            state = None
        logits, state = self(batch["input_ids"], state)
        # Truncated BPTT: the next window starts from this state, without a gradient path into this one.
        self._state[stage] = [tuple(s.detach() for s in st) if isinstance(st, tuple) else st.detach() for st in state]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].t().reshape(-1))
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True)
        self.log(f"{stage}/ppl", torch.exp(loss.detach()), on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._state["train"] = None

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the language model's loss became {loss.item()} at step {self.global_step}; lower the learning rate "
                "or set --trainer.gradient_clip_val, then resume with --ckpt_path last")
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None and not self.trainer.sanity_checking:
            print(f"epoch {self.current_epoch}: validation perplexity {math.exp(float(loss)):.1f}")

    def metric_names(self) -> set[str]:
        names = {f"{stage}/{name}" for stage in ("train", "val") for name in ("loss", "ppl")}
        return names | {"train/loss_step", "train/loss_epoch"}

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        if sized_by_steps(self.scheduler):
            scheduler = self.scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}


def _batch_of(state: list) -> int:
    first = state[0][0] if isinstance(state[0], tuple) else state[0]
    return first.shape[1]  # (layers, batch, hidden)


def pretrained_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """A language model checkpoint's encoder weights, named as in the encoder (`embedding.weight`, `layers.0.0...`)."""
    return {k.removeprefix("encoder."): v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}


def read_language_model(path: str) -> dict:
    ckpt = read_checkpoint(path)
    expect_kind(path, ckpt, "language_model", "fit --model.pretrained")
    return ckpt


def load_pretrained(encoder: nn.Module, path: str) -> None:
    """Copy a language model's embedding and recurrent weights into `encoder`, which must have their shapes."""
    weights = pretrained_weights(read_language_model(path))
    own = encoder.state_dict()
    for name, tensor in weights.items():
        if name not in own or own[name].shape != tensor.shape:
            here = tuple(own[name].shape) if name in own else "absent"
            raise UserError(f"model.pretrained {path}: encoder weight {name} is {tuple(tensor.shape)} there, {here} here; "
                            "give the classifier's encoder the language model's cell, embed_dim, hidden_size and "
                            "num_layers (bidirectional: false)")
    missing = [name for name in own if name not in weights and not name.startswith("bigrams")]
    if missing:
        raise UserError(f"model.pretrained {path}: the language model has no {missing[0]}; the classifier's encoder "
                        "must be the same kind (cell, num_layers, bidirectional: false)")
    encoder.load_state_dict(weights, strict=False)
