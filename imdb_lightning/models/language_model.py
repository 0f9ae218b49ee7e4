"""LanguageModel: the classifier's own encoder trained to predict the next word, for fine-tuning.

The embedding and recurrent layers are a `RecurrentEncoder`'s, so `fit --model.pretrained`
copies them into the classifier one to one. The output layer reuses the embedding matrix (tied
weights, Press & Wolf 2017): a 30k-word softmax then adds no parameters, only a projection from
the hidden size to the embedding size when the two differ. On a CPU that softmax is most of the
cost; `adaptive_cutoffs` splits it (Grave et al. 2017) so rare words cost only when they occur.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from ..errors import ConfigError
from ..resume import training_progress
from .base import TrainingModule, WeightedMean
from .encoders import RecurrentEncoder, sequence_dropout


class LanguageModel(TrainingModule):
    """Next-word prediction over a unidirectional `RecurrentEncoder`'s embedding and layers.

    Args:
        encoder: the recurrent encoder to pretrain (its pooling is unused here).
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: LR scheduler factory; one with `total_steps` (OneCycleLR) is sized to the run.
        adaptive_cutoffs: token ids where the softmax's clusters begin, e.g. [2000, 10000]; empty: one
            full softmax. Token ids run from frequent to rare, so the first cluster (the head) holds the
            frequent words and one entry per rarer cluster, whose own softmax is computed only for
            the positions whose next word lies in it. The probabilities stay exact.
        task: what its checkpoints hold, for the commands that read them (always `language_model`; a
            resume reads it back with the other settings).
    """

    def __init__(self, encoder: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, adaptive_cutoffs: list[int] = (),
                 task: Literal["language_model"] = "language_model"):
        super().__init__(encoder, optimizer, scheduler)
        adaptive_cutoffs = list(adaptive_cutoffs)
        if adaptive_cutoffs and (adaptive_cutoffs != sorted(set(adaptive_cutoffs)) or adaptive_cutoffs[0] < 2
                                 or adaptive_cutoffs[-1] >= encoder.vocab_size):
            raise ConfigError(f"model.adaptive_cutoffs must rise strictly between 2 and the vocabulary size "
                              f"({encoder.vocab_size}), got {adaptive_cutoffs}")
        if not isinstance(encoder, RecurrentEncoder):
            raise ConfigError(f"model.encoder: a language model needs a RecurrentEncoder, got {type(encoder).__name__}")
        if encoder.bidirectional:
            raise ConfigError("model.encoder.bidirectional: a language model reads left to right; use bidirectional: false")
        # dropout on the word vectors and on the top layer's outputs, drawn as the encoder draws its own
        self.embedding_dropout = sequence_dropout(encoder.embed_dropout, encoder.variational)
        self.output_dropout = sequence_dropout(encoder.dropout, encoder.variational)
        # (time, batch, hidden) -> (time, batch, embed), where the tied output matrix lives
        self.project = nn.Linear(encoder.hidden_size, encoder.embed_dim) if encoder.hidden_size != encoder.embed_dim \
            else nn.Identity()
        self.output_bias = nn.Parameter(torch.zeros(encoder.vocab_size))
        self.cutoffs = [*adaptive_cutoffs, encoder.vocab_size]
        # one vector (and bias) per tail cluster: the head's entry for "the next word is in that cluster"
        self.cluster_vectors = nn.Parameter(torch.zeros(len(adaptive_cutoffs), encoder.embed_dim))
        self.cluster_bias = nn.Parameter(torch.zeros(len(adaptive_cutoffs)))
        self.save_encoder_hyperparameters()
        self._state: dict[str, Optional[list]] = {"train": None, "val": None}  # carried between windows
        # Token-weighted mean losses over an epoch; the training one goes into checkpoints, so a run
        # resumed mid-epoch reports the same epoch figure as one never stopped.
        # (no host sync per step to look for NaNs: TrainingModule.read_deferred stops on a non-finite loss)
        self.train_loss, self.val_loss = WeightedMean(), WeightedMean()
        self.train_loss.persistent(True)

    def hidden(self, input_ids: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """input_ids (batch, time) -> output features (time, batch, embed), and each layer's final state."""
        x = self.embedding_dropout(self.encoder.embed(input_ids))  # (time, batch, embed)
        x, state = self.encoder.run(x, None, state)  # (time, batch, hidden): every window fills its rows
        return self.project(self.output_dropout(x)), state

    def forward(self, input_ids: torch.Tensor, state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """input_ids (batch, time) -> next-word log-probabilities (time, batch, vocab), and the final states."""
        features, state = self.hidden(input_ids, state)
        head = self._head_log_probs(features)  # (time, batch, head + clusters)
        parts = [head[..., : self.cutoffs[0]]]
        for cluster, (start, end) in enumerate(zip(self.cutoffs, self.cutoffs[1:])):
            tail = self._tail_logits(features, start, end)
            parts.append(head[..., self.cutoffs[0] + cluster, None] + tail.log_softmax(-1))
        return torch.cat(parts, dim=-1), state

    def _head_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        head = self.cutoffs[0]
        weight = torch.cat([self.encoder.embedding.weight[:head], self.cluster_vectors])  # (head + clusters, embed)
        return F.linear(features, weight, torch.cat([self.output_bias[:head], self.cluster_bias])).log_softmax(-1)

    def _tail_logits(self, features: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Logits of words start..end-1 (a tail cluster), from the tied embedding rows: (..., end - start)."""
        return F.linear(features, self.encoder.embedding.weight[start:end], self.output_bias[start:end])

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-word cross-entropy of features (n, embed) against targets (n,)."""
        head = self._head_log_probs(features)  # (n, head + clusters)
        in_head = targets < self.cutoffs[0]
        # a tail word's log-probability: its cluster's, from the head, plus its own within the cluster
        nll = -head.gather(1, targets.clamp(max=self.cutoffs[0] - 1)[:, None]).squeeze(1) * in_head
        for cluster, (start, end) in enumerate(zip(self.cutoffs, self.cutoffs[1:])):
            rows = ((targets >= start) & (targets < end)).nonzero().squeeze(1)  # positions whose word is here
            if len(rows):
                tail = self._tail_logits(features[rows], start, end)
                word = tail.log_softmax(-1).gather(1, (targets[rows] - start)[:, None]).squeeze(1)
                nll = nll.index_add(0, rows, -(head[rows, self.cutoffs[0] + cluster] + word))
        return nll.mean()

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        ids, state = batch["input_ids"], self._state[stage]
        first = None if state is None else state[0][0] if isinstance(state[0], tuple) else state[0]  # (1, batch, hidden)
        if first is not None and first.shape[1] != ids.shape[0]:  # a batch of another size: the state does not fit
            state = None
        elif first is not None and first.device != ids.device:  # restored from a checkpoint
            state = _map_state(state, lambda s: s.to(ids.device))
        features, state = self.hidden(ids, state)  # (time, batch, embed)
        # Truncated BPTT: the next window starts from this state, without a gradient path into this one.
        self._state[stage] = _map_state(state, torch.Tensor.detach)
        loss = self.loss(features.reshape(-1, features.shape[-1]), batch["targets"].t().reshape(-1))
        if stage == "train":  # read with the next logged step (TrainingModule.defer)
            self.defer(loss, batch["targets"].numel())
        else:
            self.val_loss.update(loss.detach(), batch["targets"].numel())
        return loss

    def nonfinite_message(self, step: int, value: float) -> str:
        return (f"the language model's loss became {value} at step {step}; lower the learning rate "
                "or set --trainer.gradient_clip_val, then resume with --ckpt_path last")

    def on_train_epoch_start(self) -> None:  # (not called for the epoch a run resumes in the middle of)
        self._state["train"] = None

    def on_validation_epoch_start(self) -> None:
        self._state["val"] = None

    def log_epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        values = super().log_epoch_metrics(stage)
        loss = values.get("train/loss_epoch" if stage == "train" else f"{stage}/loss")
        if loss is not None:
            self.log(f"{stage}/ppl", torch.exp(loss))
        return values

    def on_validation_epoch_end(self) -> None:
        loss = self.log_epoch_metrics("val").get("val/loss")
        if loss is not None and not self.trainer.sanity_checking:
            print(f"epoch {self.current_epoch}: validation perplexity {math.exp(loss):.1f}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        epoch, done = training_progress(self.trainer) if self.trainer.state.fn == "fit" else (0, 0)
        if done and self._state["train"] is not None:  # mid-epoch: the state the next window starts from
            checkpoint["carried_state"] = {"epoch": epoch, "state": self._state["train"]}  # (epoch: for readers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Saved only in the middle of an epoch, where a resumed run goes on from the state its last window left.
        self._state["train"] = checkpoint.get("carried_state", {}).get("state")

    def metric_names(self) -> set[str]:
        return {"train/loss", "train/loss_epoch", "train/ppl", "val/loss", "val/ppl"}


def _map_state(state: list, fn) -> list:
    """fn applied to every tensor of per-layer states (an LSTM's (h, c) tuples or a GRU's / RNN's h)."""
    return [tuple(map(fn, st)) if isinstance(st, tuple) else fn(st) for st in state]
