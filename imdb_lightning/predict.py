"""`imdb-lightning predict`: reviews in (arguments, txt/csv/jsonl/parquet), label and probability out."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from itertools import islice
from pathlib import Path
from typing import Iterator

import yaml

from .callbacks import last_checkpoint, run_folders
from .errors import UserError
from .standalone import BATCH_SIZE

READ_FORMATS = (".txt", ".csv", ".jsonl", ".parquet")
WRITE_FORMATS = (".csv", ".jsonl", ".parquet")
CHUNK = 8192  # reviews tokenized and classified at a time


def read_texts(path: str) -> tuple[Iterator[str], int | None]:
    """Stream the reviews of a file, with their count when the format tells it cheaply."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no such file")
    suffix = file.suffix.lower()
    if suffix == ".txt":
        return (line.rstrip("\n") for line in file.open(encoding="utf-8", errors="replace")), None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(file)
        if "text" not in reader.schema_arrow.names:
            raise UserError(f"{path}: no 'text' column; columns found: {', '.join(reader.schema_arrow.names)}")
        rows = (t for batch in reader.iter_batches(columns=["text"]) for t in batch.column(0).to_pylist())
        return rows, reader.metadata.num_rows
    if suffix == ".csv":
        handle = file.open(newline="", encoding="utf-8", errors="replace")
        reader = csv.DictReader(handle)
        if "text" not in (reader.fieldnames or []):
            raise UserError(f"{path}: no 'text' column; columns found: {', '.join(reader.fieldnames or [])}")
        return (row["text"] for row in reader), None
    if suffix == ".jsonl":
        def rows():
            for number, line in enumerate(file.open(encoding="utf-8", errors="replace")):
                if line.strip():
                    record = json.loads(line)
                    if "text" not in record:
                        raise UserError(f"{path}: line {number + 1} has no 'text' field")
                    yield record["text"]
        return rows(), None
    raise UserError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(READ_FORMATS)}")


class Writer:
    """Writes (id, probability, label[, text]) rows chunk by chunk to csv, jsonl or parquet."""

    def __init__(self, path: str, with_text: bool):
        self.path, self.with_text, self.rows = Path(path), with_text, 0
        self.suffix = self.path.suffix.lower()
        if self.suffix not in WRITE_FORMATS:
            raise UserError(f"{path}: cannot write {self.suffix!r}; use one of {', '.join(WRITE_FORMATS)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet = None
        self._handle = None if self.suffix == ".parquet" else self.path.open("w", newline="", encoding="utf-8")
        if self.suffix == ".csv":
            self._csv = csv.writer(self._handle)
            self._csv.writerow(["id", "probability", "label"] + (["text"] if with_text else []))

    def write(self, texts: list[str], probs: list[float], threshold: float) -> None:
        ids = range(self.rows, self.rows + len(texts))
        labels = ["positive" if p >= threshold else "negative" for p in probs]
        columns = {"id": list(ids), "probability": probs, "label": labels, **({"text": texts} if self.with_text else {})}
        if self.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(columns)
            self._parquet = self._parquet or pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
        elif self.suffix == ".csv":
            self._csv.writerows(zip(*columns.values()))
        else:
            for values in zip(*columns.values()):
                self._handle.write(json.dumps(dict(zip(columns, values)), ensure_ascii=False) + "\n")
        self.rows += len(texts)

    def close(self) -> None:
        if self._parquet:
            self._parquet.close()
        if self._handle:
            self._handle.close()


def latest_checkpoint(config: str, defaults: str) -> Path:
    """The best checkpoint of the newest run of an experiment config (else its last.ckpt)."""
    logger = {}
    for path in (defaults, config):
        if not Path(path).is_file():
            raise UserError(f"{path}: no such config file")
        logger.update((yaml.safe_load(Path(path).read_text()) or {}).get("trainer", {}).get("logger", {}).get("init_args", {}))
    root = Path(logger.get("save_dir", "lightning_logs")) / logger.get("name", "default")
    for run in reversed(run_folders(root)):
        best = sorted(run.glob("checkpoints/best*.ckpt"))
        found = best[-1] if best else last_checkpoint(run)
        if found:
            return found
    raise UserError(f"no checkpoint found under {root}; train first: imdb-lightning fit --config {config}")


def predict_main(argv: list[str], defaults: str) -> None:
    from tqdm import tqdm

    from . import load

    parser = argparse.ArgumentParser(
        prog="imdb-lightning predict",
        description="Classify raw reviews with a trained checkpoint: label, P(positive) and the review.",
    )
    parser.add_argument("texts", nargs="*", help="reviews to classify")
    parser.add_argument("--ckpt_path", help="checkpoint to use")
    parser.add_argument("--config", help="experiment YAML: use the best checkpoint of its newest run")
    parser.add_argument("--file", help=f"reviews: {', '.join(READ_FORMATS)} (one per line, or a 'text' column)")
    parser.add_argument("--output", help=f"write predictions to {', '.join(WRITE_FORMATS)} instead of printing")
    parser.add_argument("--with_text", action="store_true", help="also write each review's text to --output")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="reviews per forward pass (try more on a GPU)")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(positive) at or above which a review is positive")
    opts = parser.parse_args(argv)
    if not opts.ckpt_path and not opts.config:
        parser.error("give --ckpt_path, or --config to use the newest run of that experiment")
    if bool(opts.texts) == bool(opts.file):
        parser.error("pass reviews as arguments or with --file (one of the two)")
    texts, total = iter(opts.texts), len(opts.texts)
    if opts.file:
        texts, total = read_texts(opts.file)
    writer = Writer(opts.output, opts.with_text) if opts.output else None
    ckpt = opts.ckpt_path or latest_checkpoint(opts.config, defaults)
    print(f"# checkpoint: {ckpt}", file=sys.stderr)
    predictor = load(ckpt)
    with tqdm(total=total, unit="review", disable=writer is None, file=sys.stderr) as bar:
        # Reviews stream through in chunks: a large file never sits in memory whole.
        while chunk := list(islice(texts, CHUNK)):
            probs = predictor.predict(chunk, opts.batch_size)
            if writer:
                writer.write(chunk, probs, opts.threshold)
            else:
                for text, prob in zip(chunk, probs):
                    label = "positive" if prob >= opts.threshold else "negative"
                    preview = " ".join(text.split())
                    print(f"{label}\t{prob:.4f}\t{preview[:80] + ('...' if len(preview) > 80 else '')}")
            bar.update(len(probs))
    if writer:
        writer.close()
        print(f"wrote {writer.rows} predictions to {opts.output}", file=sys.stderr)
