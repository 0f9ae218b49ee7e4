"""Encoders: plain `nn.Module`s mapping (input_ids, lengths) to one vector per review.

An encoder has an `output_dim` and keeps each constructor argument as an attribute of the
same name (as scikit-learn's get_params does), so `encoder_spec` can write it into a
checkpoint as plain data and `build_encoder` can rebuild it. Text encoders split `forward` into
`embed(ids)` and `encode(embedded, lengths, ids)`, so the embeddings can be perturbed in between
(adversarial training) or shared with a language model. Adding an encoder means one class here
(or anywhere importable), a line in `ENCODERS` to name it, and one YAML in experiments/.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Literal, Optional, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenizer import PAD_ID, UNK_ID
from ..errors import ConfigError

Pooling = Literal["last", "mean", "max", "max_mean", "last_max_mean"]
POOLINGS = get_args(Pooling)
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{owner}.{name} must be at least 1, got {value}")


def _dropout(owner: str, **values) -> None:
    for name, value in values.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{owner}.{name} must be in [0, 1), got {value}")


def pool(states: torch.Tensor, lengths: torch.Tensor, how: Pooling, backward_dims: int = 0) -> torch.Tensor:
    """Pool time-major (time, batch, dim) states over each review's real tokens only, so padding never leaks in.

    `last` takes the forward features at the last real token and, for the trailing
    `backward_dims` features of a bidirectional encoder, those at the first token, where the
    backward pass ends. `max_mean` concatenates the two poolings (twice the features), `last_max_mean`
    all three (ULMFiT's concat pooling).
    """
    if how in ("max_mean", "last_max_mean"):
        parts = ["last"] * (how == "last_max_mean") + ["max", "mean"]
        return torch.cat([pool(states, lengths, part, backward_dims) for part in parts], dim=-1)  # (batch, parts * dim)
    time, batch, dim = states.shape
    mask = torch.arange(time, device=states.device)[:, None] < lengths[None, :]  # (time, batch)
    if how == "mean":
        return (states * mask[..., None]).sum(0) / lengths[:, None].to(states.dtype)
    if how == "max":
        return states.masked_fill(~mask[..., None], float("-inf")).amax(0)
    rows = torch.arange(batch, device=states.device)
    forward_dims = dim - backward_dims
    last = states[lengths - 1, rows, :forward_dims]  # (batch, forward_dims)
    return torch.cat([last, states[0, :, forward_dims:]], dim=-1) if backward_dims else last


def pooled_dim(dim: int, pooling: Pooling) -> int:
    return {"max_mean": 2, "last_max_mean": 3}.get(pooling, 1) * dim


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani 2016; AWD-LSTM's locked dropout) on time-major
    (time, batch, dim) inputs: one mask per sequence, the same at every time step, so a dropped
    feature stays dropped for the whole review instead of flickering step to step."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - self.p) / (1 - self.p)  # (1, batch, dim)
        return x * mask


def sequence_dropout(p: float, variational: bool) -> nn.Module:
    """Dropout on time-major sequences: one mask per sequence (`variational`) or one per step."""
    return LockedDropout(p) if variational else nn.Dropout(p)


def reverse_within_length(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Reverse each sequence's real tokens in time-major x (time, batch, ...) and leave its padding
    in place (lengths None: no padding); its own inverse."""
    if lengths is None:
        return x.flip(0)
    time = x.shape[0]
    steps = torch.arange(time, device=x.device)[:, None]  # (time, 1)
    index = torch.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)  # (time, batch)
    return x.gather(0, index[..., None].expand_as(x))


def bigram_bag(ids: torch.Tensor, lengths: torch.Tensor, table: nn.Embedding, dropout: nn.Module) -> torch.Tensor:
    """Mean embedding of each review's adjacent token pairs, hashed into `table`'s rows (fastText's
    bigrams); time-major ids (time, batch). A one-token review has no pairs and gets zeros."""
    pair = (ids[:-1] * 1_000_003 + ids[1:]) % table.num_embeddings  # (time - 1, batch) hashed pair ids
    pairs = dropout(table(pair))  # (time - 1, batch, embed)
    has_pairs = (lengths > 1).to(pairs.dtype)[:, None]  # (batch, 1)
    return has_pairs * pool(pairs, (lengths - 1).clamp(min=1), "mean")  # (batch, embed)


def keras_init_(rnn: nn.RNNBase, cell: str) -> None:
    # Keras' defaults: Glorot-uniform input weights, orthogonal recurrent weights, zero biases,
    # forget-gate bias 1. Measured here they train much faster than PyTorch's uniform(+-1/sqrt(H)).
    for name, param in rnn.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(param)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(param)
        elif name.startswith("bias"):
            nn.init.zeros_(param)
            if cell == "lstm" and name.startswith("bias_ih"):
                hidden = param.shape[0] // 4
                param.data[hidden : 2 * hidden] = 1.0  # gate order: input, forget, cell, output


class TextEncoder(nn.Module):
    """A text encoder is `encode(embed(ids), lengths, ids)`; subclasses define the two halves."""

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids (batch, time), lengths (batch,) -> (batch, output_dim)."""
        return self.encode(self.embed(input_ids), lengths, input_ids)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, time) token ids -> (time, batch, embed) word embeddings."""
        return self.embedding(input_ids.t())


class Recurrence(nn.Module):
    """Stacked SimpleRNN (tanh) / LSTM / GRU layers + pooling over time, for real-valued inputs
    (batch, time, input_size): the encoder of time series, and the core of `RecurrentEncoder`.

    Bidirectional layers run the backward direction over each sequence reversed within its own
    length, so padded positions never feed the real steps' states: a sequence gets the same
    features alone or padded inside a batch, without the cost of packed sequences on CPU
    (`packed: true` uses them anyway, for cuDNN on GPU).
    """

    def __init__(
        self,
        input_size: int = 1,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: Pooling = "max",
        dropout: float = 0.0,
        init: Literal["keras", "torch"] = "keras",
        packed: bool = False,
        weight_drop: float = 0.0,
        variational: bool = False,
    ):
        super().__init__()
        owner = "model.encoder"
        if cell not in CELLS:
            raise ConfigError(f"{owner}.cell {cell!r} is not one of {', '.join(CELLS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"{owner}.pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if init not in ("keras", "torch"):
            raise ConfigError(f"{owner}.init {init!r} is not one of keras, torch")
        _positive(owner, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        _dropout(owner, dropout=dropout, weight_drop=weight_drop)
        self.input_size, self.cell, self.hidden_size, self.num_layers = input_size, cell, hidden_size, num_layers
        self.bidirectional, self.pooling, self.dropout, self.init = bidirectional, pooling, dropout, init
        self.packed, self.weight_drop, self.variational = packed, weight_drop, variational
        self.add_inputs()  # a subclass's input layers: their weights are drawn before the recurrent ones
        directions = 2 if bidirectional else 1
        states_dim = directions * hidden_size  # features per time step, what a next layer reads
        self.output_dim = pooled_dim(states_dim, pooling)
        self.layer_dropout = sequence_dropout(dropout, variational)
        self.layers = nn.ModuleList(
            nn.ModuleList(CELLS[cell](input_size if layer == 0 else states_dim, hidden_size) for _ in range(directions))
            for layer in range(num_layers)
        )
        if init == "keras":
            for rnn in self.layers.modules():
                if isinstance(rnn, nn.RNNBase):
                    keras_init_(rnn, cell)

    def add_inputs(self) -> None:
        """Layers before the recurrence (RecurrentEncoder's word embeddings); none for real-valued inputs."""

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """inputs (batch, time, input_size), lengths (batch,) -> (batch, output_dim)."""
        return self.pooled(inputs.transpose(0, 1), lengths)

    def pooled(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Time-major x (time, batch, input_size) -> pooled states (batch, output_dim)."""
        states, _ = self.run(x, lengths)  # (time, batch, directions * hidden)
        return pool(states, lengths, self.pooling, self.hidden_size if self.bidirectional else 0)  # (batch, pooled)

    def run(self, x: torch.Tensor, lengths: Optional[torch.Tensor], state: Optional[list] = None) -> tuple[torch.Tensor, list]:
        """Time-major x (time, batch, input_size) through the layers -> the top layer's states (time, batch,
        directions * hidden) and each layer's final state (an LSTM's (h, c), else h: (1, batch, hidden)), which
        `state` takes back to go on from (None: zeros). lengths (batch,), or None when every sequence fills x.
        A bidirectional layer's state is its forward direction's: the backward one starts afresh at each end."""
        # Time-major inside: PyTorch's CPU RNN kernels ran faster than with batch_first here.
        state = state or [None] * self.num_layers
        final = []
        for index, directions in enumerate(self.layers):
            if index:
                x = self.layer_dropout(x)
            states, last = self._run(directions[0], x, lengths, state[index])  # (time, batch, hidden)
            final.append(last)
            if self.bidirectional:
                backward, _ = self._run(directions[1], reverse_within_length(x, lengths), lengths)
                states = torch.cat([states, reverse_within_length(backward, lengths)], dim=-1)
            x = states  # (time, batch, directions * hidden)
        return x, final

    def _run(self, rnn: nn.RNNBase, x: torch.Tensor, lengths: Optional[torch.Tensor], state=None) -> tuple:
        """One direction of one layer: its states (time, batch, hidden) and its final state."""
        time, packed = x.shape[0], self.packed and lengths is not None
        if packed:
            # Packed sequences skip the padding, which pays with cuDNN on a GPU; on CPU they ran ~10x
            # slower than padded length buckets here. Lengths must be a CPU tensor (a device sync on GPU).
            x = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        if self.training and self.weight_drop:
            # DropConnect on the recurrent weights (AWD-LSTM's weight drop): one mask per batch, the
            # same at every time step, so it regularises the recurrence itself, not single states.
            weights = {name: F.dropout(param, self.weight_drop) if name.startswith("weight_hh") else param
                       for name, param in rnn.named_parameters()}
            states, last = torch.func.functional_call(rnn, weights, (x, state))
        else:
            states, last = rnn(x, state)
        return nn.utils.rnn.pad_packed_sequence(states, total_length=time)[0] if packed else states, last


class RecurrentEncoder(Recurrence):
    """Word embeddings + `Recurrence` (stacked SimpleRNN / LSTM / GRU layers, pooled over time),
    optionally with a bag of hashed word pairs (`bigram_buckets`) and/or the bag of words itself
    (`word_bag`: the mean of the review's word embeddings, the NBoW's features) beside the pooled states.

    `embed(ids)` and `encode(embedded, lengths, ids)` are the two halves of `forward`, so
    adversarial training can perturb the embeddings in between. `reverse` reads each review from its
    last word to its first (the classifier of a backward language model); `variational` draws the
    embedding and between-layer dropout masks once per review rather than at every step.
    """

    def __init__(
        self,
        vocab_size: int = 20000,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        embed_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: Pooling = "max",
        embed_dropout: float = 0.0,
        dropout: float = 0.0,
        init: Literal["keras", "torch"] = "keras",
        packed: bool = False,
        bigram_buckets: int = 0,
        word_dropout: float = 0.0,
        weight_drop: float = 0.0,
        word_bag: bool = False,
        variational: bool = False,
        reverse: bool = False,
    ):
        owner = "model.encoder"
        _positive(owner, vocab_size=vocab_size, embed_dim=embed_dim)
        _dropout(owner, embed_dropout=embed_dropout, word_dropout=word_dropout)
        if bigram_buckets < 0:
            raise ConfigError(f"{owner}.bigram_buckets must be 0 (off) or positive, got {bigram_buckets}")
        # (set before Recurrence.__init__, whose add_inputs reads them: plain values, which nn.Module allows)
        self.vocab_size, self.embed_dim, self.embed_dropout = vocab_size, embed_dim, embed_dropout
        self.bigram_buckets, self.word_dropout, self.word_bag = bigram_buckets, word_dropout, word_bag
        self.reverse = reverse
        super().__init__(embed_dim, cell, hidden_size, num_layers, bidirectional, pooling, dropout, init, packed,
                         weight_drop, variational)  # (input_size: embed_dim)
        # bigram_buckets > 0: a bag of hashed word pairs (NBoWEncoder's bigrams) beside the pooled states
        self.output_dim += embed_dim if bigram_buckets else 0
        # word_bag: the mean word embedding beside them, so the classifier sees what the NBoW sees
        # and the recurrence has only to add to it
        self.output_dim += embed_dim if word_bag else 0
        if init == "keras":
            for table in filter(None, (self.embedding, self.bigrams)):
                nn.init.uniform_(table.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    def add_inputs(self) -> None:
        # The tables before the layers: the order random weights are drawn in (and parameters listed),
        # so a seed gives the same model as in earlier versions and older checkpoints' optimizer states fit.
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim, padding_idx=PAD_ID)
        self.bigrams = nn.Embedding(self.bigram_buckets, self.embed_dim) if self.bigram_buckets else None
        self.embedding_dropout = sequence_dropout(self.embed_dropout, self.variational)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, time) token ids -> (time, batch, embed) word embeddings."""
        if self.training and self.word_dropout:
            # whole words become <unk> while training, so no single word can carry a review
            dropped = torch.rand(input_ids.shape, device=input_ids.device) < self.word_dropout
            input_ids = input_ids.masked_fill(dropped & (input_ids != PAD_ID), UNK_ID)  # (batch, time)
        return self.embedding(input_ids.t())

    def encode(self, embedded: torch.Tensor, lengths: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings (time, batch, embed) -> features (batch, output_dim)."""
        if self.reverse:  # a backward reader (the fine-tune of a backward language model): last word first
            embedded = reverse_within_length(embedded, lengths)  # (time, batch, embed), padding left in place
        embedded = self.embedding_dropout(embedded)
        features = [self.pooled(embedded, lengths)]  # (batch, pooled)
        if self.bigrams is not None:
            features.append(bigram_bag(input_ids.t(), lengths, self.bigrams, self.embedding_dropout))  # (batch, embed)
        if self.word_bag:
            features.append(pool(embedded, lengths, "mean"))  # (batch, embed)
        return torch.cat(features, dim=-1)  # (batch, output_dim)

    forward = TextEncoder.forward  # input_ids (batch, time), lengths (batch,) -> (batch, output_dim)


def layer_groups(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters from the input up, one group per layer (embedding tables first), for
    per-layer learning rates and gradual unfreezing; one group for encoders without layers."""
    if not isinstance(encoder, Recurrence):
        return [list(encoder.parameters())]
    groups = [list(layer.parameters()) for layer in encoder.layers]
    if isinstance(encoder, RecurrentEncoder):
        groups.insert(0, [table.weight for table in filter(None, (encoder.embedding, encoder.bigrams))])
    grouped = {id(p) for group in groups for p in group}
    groups[-1] += [p for p in encoder.parameters() if id(p) not in grouped]  # anything a subclass adds
    return groups


def encoder_spec(encoder: nn.Module) -> dict:
    """The encoder as plain data: {"class_path": ..., "init_args": {...}}."""
    cls = type(encoder)
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    missing = [n for n in names if not hasattr(encoder, n)]
    if missing:
        raise ConfigError(f"{cls.__qualname__} must keep its constructor arguments as attributes; missing: {missing}")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {n: getattr(encoder, n) for n in names}}


def build_encoder(spec: dict) -> nn.Module:
    path, init_args = spec["class_path"], dict(spec.get("init_args", {}))
    if path.startswith("imdb_lightning.encoders."):  # a checkpoint from before the package had folders
        path = path.replace("imdb_lightning.encoders.", f"{__name__}.")
        if path.endswith(".RecurrentEncoder"):
            init_args.pop("input_size", None)  # text encoders had it, always 0
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"encoder class {path!r} cannot be imported: {err}") from err
    return cls(**init_args)


def count_parameters(spec: dict) -> int:
    """An encoder's size without building it: on PyTorch's meta device nothing is allocated, and no random
    number is drawn from the generators a run's seed has set."""
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        return sum(p.numel() for p in build_encoder(spec).parameters())


class ScratchRNNEncoder(TextEncoder):
    """A SimpleRNN written out for reading: h_t = tanh(W_x x_t + W_h h_{t-1} + b), one step at a time.

    Slow (a Python loop over time) and meant for learning: with `tbptt_steps = k > 0` gradients flow
    back through only the last k steps of each review (truncated backpropagation through time, as
    the hand-written numpy tutorials do); 0 backpropagates through the whole review. With weights
    copied from `nn.RNN` (see `from_torch_rnn`) it gives the same outputs and gradients.
    """

    def __init__(self, vocab_size: int = 20000, embed_dim: int = 64, hidden_size: int = 64,
                 pooling: Pooling = "last", tbptt_steps: int = 0):
        super().__init__()
        _positive("model.encoder", vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size)
        if tbptt_steps < 0:
            raise ConfigError(f"model.encoder.tbptt_steps must be 0 (off) or positive, got {tbptt_steps}")
        self.vocab_size, self.embed_dim, self.hidden_size = vocab_size, embed_dim, hidden_size
        self.pooling, self.tbptt_steps = pooling, tbptt_steps
        self.output_dim = pooled_dim(hidden_size, pooling)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.W_x = nn.Linear(embed_dim, hidden_size)  # input weights, bias b_x
        self.W_h = nn.Linear(hidden_size, hidden_size)  # recurrent weights, bias b_h (b = b_x + b_h)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[1], self.hidden_size)  # (batch, hidden)
        states = []
        for t in range(x.shape[0]):
            if self.tbptt_steps:
                # Cut the gradient path k steps before each review's own end.
                cut = (lengths - self.tbptt_steps == t)[:, None]  # (batch, 1)
                h = torch.where(cut, h.detach(), h)
            h = torch.tanh(self.W_x(x[t]) + self.W_h(h))  # (batch, hidden)
            states.append(h)
        return pool(torch.stack(states), lengths, self.pooling)  # (batch, hidden)

    @torch.no_grad()
    def from_torch_rnn(self, rnn: nn.RNN, embedding: nn.Embedding) -> ScratchRNNEncoder:
        """Copy the weights of a one-layer tanh `nn.RNN` (and its embedding) into this encoder."""
        self.embedding.weight.copy_(embedding.weight)
        self.W_x.weight.copy_(rnn.weight_ih_l0)
        self.W_x.bias.copy_(rnn.bias_ih_l0)
        self.W_h.weight.copy_(rnn.weight_hh_l0)
        self.W_h.bias.copy_(rnn.bias_hh_l0)
        return self


class NBoWEncoder(TextEncoder):
    """Neural bag of words (fastText-style): the mean of word embeddings over each review's tokens,
    plus, with `bigram_buckets > 0`, hashed embeddings of adjacent word pairs. No recurrence: the
    reference that shows what reading in order adds."""

    def __init__(self, vocab_size: int = 20000, embed_dim: int = 64, bigram_buckets: int = 0, embed_dropout: float = 0.0):
        super().__init__()
        _positive("model.encoder", vocab_size=vocab_size, embed_dim=embed_dim)
        if bigram_buckets < 0:
            raise ConfigError(f"model.encoder.bigram_buckets must be 0 (off) or positive, got {bigram_buckets}")
        _dropout("model.encoder", embed_dropout=embed_dropout)
        self.vocab_size, self.embed_dim, self.bigram_buckets = vocab_size, embed_dim, bigram_buckets
        self.embed_dropout, self.output_dim = embed_dropout, embed_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.bigrams = nn.Embedding(bigram_buckets, embed_dim) if bigram_buckets else None
        self.dropout_layer = nn.Dropout(embed_dropout)

    def encode(self, embedded: torch.Tensor, lengths: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = pool(self.dropout_layer(embedded), lengths, "mean")  # (batch, embed)
        if self.bigrams is None:
            return pooled
        return pooled + bigram_bag(input_ids.t(), lengths, self.bigrams, self.dropout_layer)


# Encoders by name (sweep, bench and the memory diagnostic take these; experiments/<name>.yaml use the same).
ENCODERS: dict[str, tuple[type[nn.Module], dict]] = {
    "rnn": (RecurrentEncoder, {"cell": "rnn", "bidirectional": False}),
    "lstm": (RecurrentEncoder, {"cell": "lstm", "bidirectional": False}),
    "gru": (RecurrentEncoder, {"cell": "gru", "bidirectional": False}),
    "bilstm": (RecurrentEncoder, {"cell": "lstm", "bidirectional": True}),
    "bigru": (RecurrentEncoder, {"cell": "gru", "bidirectional": True}),
    "nbow": (NBoWEncoder, {}),
}
RECURRENT = tuple(name for name, (cls, _) in ENCODERS.items() if issubclass(cls, Recurrence))


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def named_encoder(name: str, **settings) -> nn.Module:
    """ENCODERS[name] built with `settings` on top of its preset."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
    cls, preset = ENCODERS[name]
    return cls(**{**preset, **settings})
