"""`imdb-lightning memory`: can an encoder carry a cue to the end of a review?

Each synthetic review is neutral filler with one sentiment word followed by exactly `d` more
filler words. With pooling `last` the classifier sees only the final state, so it is right only if
the encoder remembered the cue across d steps. Accuracy against d, per encoder, over seeds.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch

from imdb_lightning.arguments import ArgumentParser, comma_list
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.sources import write_reviews
from imdb_lightning.data.synthetic import NEGATIVE, POSITIVE, SLOTS
from imdb_lightning.errors import UserError
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RECURRENT, named_encoder
from imdb_lightning.tools.compare import pyplot

FILLER = sorted({w for words in SLOTS.values() for phrase in words for w in phrase.split()}
                | {"the", "film", "scene", "and", "then", "a"})


def memory_reviews(n: int, distance: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """`n` reviews: 5-20 filler words, the cue, then exactly `distance` filler words."""
    rng = np.random.default_rng([seed, distance])
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        cue = rng.choice(POSITIVE if label else NEGATIVE)
        before = rng.choice(FILLER, int(rng.integers(5, 21))).tolist()
        after = rng.choice(FILLER, distance).tolist()
        texts.append(" ".join([*before, cue, *after]))
        labels.append(label)
    return texts, labels


def accuracy(encoder: str, seed: int, dm: IMDBDataModule, epochs: int, hidden: int) -> float:
    L.seed_everything(seed, verbose=False)
    model = SentimentClassifier(
        named_encoder(encoder, vocab_size=dm.hparams.vocab_size, embed_dim=16, hidden_size=hidden, pooling="last"),
        optimizer=partial(torch.optim.Adam, lr=3e-3), scheduler=None,
    )
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=True, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    return float(trainer.validate(model, dm, verbose=False)[0]["val/acc"])


def run(encoders: list[str], distances: list[int], seeds: list[int], size: int, epochs: int, hidden: int) -> dict:
    results: dict = {"settings": dict(size=size, epochs=epochs, hidden_size=hidden, embed_dim=16, pooling="last"),
                     "accuracy": {e: {} for e in encoders}}
    with tempfile.TemporaryDirectory() as tmp:
        for d in distances:
            texts, labels = memory_reviews(size, d)
            path = write_reviews(texts, labels, Path(tmp) / f"memory-{d}.parquet")
            dm = IMDBDataModule(train_files=path, vocab_size=64, min_frequency=1, max_length=d + 25, batch_size=32,
                                cache_dir=str(Path(tmp) / "cache"))
            for encoder in encoders:
                accs = [accuracy(encoder, seed, dm, epochs, hidden) for seed in seeds]
                results["accuracy"][encoder][str(d)] = accs
                each = ", ".join(f"{a:.3f}" for a in accs)
                print(f"[memory] d={d:4d} {encoder:6s} val acc {statistics.fmean(accs):.3f} ({each})")
    return results


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for encoder, by_distance in results["accuracy"].items():
        ds = sorted(by_distance, key=int)
        accs = np.array([by_distance[d] for d in ds])  # (distances, seeds)
        xs = [int(d) for d in ds]
        line = ax.plot(xs, accs.mean(1), marker="o", label=encoder)[0]
        ax.fill_between(xs, accs.min(1), accs.max(1), alpha=0.2, color=line.get_color())
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set(xscale="log", xlabel="distance d from the cue to the end (tokens)", ylabel="validation accuracy",
           title="Remembering a cue d tokens back (pooling last; band: min-max over seeds)", ylim=(0.4, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    distances = sorted({d for r in results["accuracy"].values() for d in r}, key=int)
    lines = ["| encoder | " + " | ".join(f"d={d}" for d in distances) + " |", "|---|" + "---|" * len(distances)]
    for encoder, by_distance in results["accuracy"].items():
        cells = [f"{statistics.fmean(by_distance[d]):.3f}" for d in distances]
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    parser = ArgumentParser(prog="imdb-lightning memory", description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", type=comma_list(), default=["rnn", "lstm", "gru"], help=f"from {','.join(RECURRENT)}")
    parser.add_argument("--distances", type=comma_list(int), default=[5, 20, 50, 100, 200])
    parser.add_argument("--seeds", type=comma_list(int), default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=2000, help="reviews per distance (10%% for validation)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden_size", type=int, default=32)
    parser.add_argument("--out", default="memory", help="folder for memory.json, memory.md and memory.png")
    opts = parser.parse_args(argv)
    unknown = set(opts.encoders) - set(RECURRENT)
    if unknown:
        raise UserError(f"unknown encoder(s) {', '.join(sorted(unknown))}; choose from {', '.join(RECURRENT)}")
    for name, value in (("size", opts.size), ("epochs", opts.epochs), ("hidden_size", opts.hidden_size)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if min(opts.distances) < 0:
        raise UserError(f"--distances must be 0 or more, got {min(opts.distances)}")
    results = run(opts.encoders, opts.distances, opts.seeds, opts.size, opts.epochs, opts.hidden_size)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(results, indent=2))
    (out / "memory.md").write_text(table(results) + "\n")
    plot(results, out / "memory.png")
    print(table(results))
    print(f"wrote {out / 'memory.json'}, {out / 'memory.md'}, {out / 'memory.png'}")
    return results
