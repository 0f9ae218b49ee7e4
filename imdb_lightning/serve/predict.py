"""`imdb-lightning predict`: reviews in (arguments, txt/csv/jsonl/parquet), label and probability out."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Optional

from ..arguments import ArgumentParser
from ..errors import UserError
from ..runs import newest_checkpoint
from .runtime import BATCH_SIZE

READ_FORMATS = (".txt", ".csv", ".jsonl", ".parquet")
WRITE_FORMATS = (".csv", ".jsonl", ".parquet")
CHUNK = 8192  # reviews tokenized and classified at a time


def checked(texts: Iterator, path: str) -> Iterator[str]:
    """Reviews as strings: a missing one (null) is an empty review, as in training; anything else is an error."""
    for row, text in enumerate(texts):
        if text is None:
            yield ""
        elif isinstance(text, str):
            yield text
        else:
            raise UserError(f"{path}: text in row {row} is {type(text).__name__} {text!r}, not a string")


SNIFF = 65536  # bytes read to tell text from binary


def check_text_file(file: Path, path: str) -> None:
    """A text format must hold text: a binary file (an image, a zip) would otherwise be classified line by
    line as reviews of U+FFFD. Some bytes that are not UTF-8 in real text (a latin-1 é) get a warning."""
    with file.open("rb") as handle:
        head = handle.read(SNIFF)
    # an incremental decoder: a character cut at the end of the sample is not counted as bad
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=len(head) < SNIFF)
    if not text:
        return
    bad = text.count("\ufffd")
    odd = bad + text.count("\x00")  # bytes that are not UTF-8, and NUL bytes (UTF-16 text is half NULs)
    if odd >= 16 and odd > len(text) / 10:
        raise UserError(f"{path}: not UTF-8 text ({100 * odd / len(text):.0f}% of the characters in its first "
                        f"{len(head):,} bytes are NUL or not UTF-8: binary data, or text in another encoding such as "
                        "UTF-16); --file reads UTF-8 text, or parquet")
    if bad:
        print(f"imdb-lightning: warning: {path}: {bad} byte sequence(s) in its first {len(head):,} bytes are not UTF-8 "
              "and read as U+FFFD; save the file as UTF-8 to classify those characters", file=sys.stderr)


def read_texts(path: str) -> tuple[Iterator[str], Optional[int]]:
    """Stream the reviews of a file, with their count when the format tells it cheaply."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no such file" if not file.exists() else f"{path}: not a file")
    suffix = file.suffix.lower()
    if suffix in (".txt", ".csv", ".jsonl"):
        check_text_file(file, path)
    if suffix == ".txt":
        return (line.rstrip("\n") for line in file.open(encoding="utf-8-sig", errors="replace")), None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(file)
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{path}: cannot read it as parquet: {reason}") from err
        if "text" not in reader.schema_arrow.names:
            raise UserError(f"{path}: no 'text' column; columns found: {', '.join(reader.schema_arrow.names)}")
        rows = (t for batch in reader.iter_batches(columns=["text"]) for t in batch.column(0).to_pylist())
        return checked(rows, path), reader.metadata.num_rows
    if suffix == ".csv":
        handle = file.open(newline="", encoding="utf-8-sig", errors="replace")
        reader = csv.DictReader(handle)
        if "text" not in (reader.fieldnames or []):
            raise UserError(f"{path}: no 'text' column; columns found: {', '.join(reader.fieldnames or []) or 'none'}")
        return checked((row["text"] for row in reader), path), None
    if suffix == ".jsonl":
        def rows():
            for number, line in enumerate(file.open(encoding="utf-8-sig", errors="replace"), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from err
                if not isinstance(record, dict) or "text" not in record:
                    raise UserError(f"{path}: line {number} has no 'text' field")
                yield record["text"]
        return checked(rows(), path), None
    raise UserError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(READ_FORMATS)}")


class Writer:
    """Writes (id, probability, label[, text]) rows chunk by chunk to csv, jsonl or parquet.

    Rows go to a temporary file beside the target, renamed into place by `close()`: an error
    half-way leaves no partial output behind (`discard()` removes it).
    """

    def __init__(self, path: str, with_text: bool):
        self.path, self.with_text, self.rows = Path(path), with_text, 0
        self.suffix = self.path.suffix.lower()
        if self.suffix not in WRITE_FORMATS:
            raise UserError(f"{path}: cannot write {self.suffix!r}; use one of {', '.join(WRITE_FORMATS)}")
        if self.path.is_dir():
            raise UserError(f"{path}: is a folder; --output names a file")
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._handle = self._parquet = None
        try:  # (a Ctrl-C here, as anywhere until close(), leaves no temporary file behind)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.tmp.open("wb") if self.suffix == ".parquet" else self.tmp.open("w", newline="", encoding="utf-8")
            if self.suffix == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                fields = [("id", pa.int64()), ("probability", pa.float64()), ("label", pa.string())]
                self.schema = pa.schema(fields + ([("text", pa.string())] if with_text else []))
                self._parquet = pq.ParquetWriter(self._handle, self.schema)
            elif self.suffix == ".csv":
                self._csv = csv.writer(self._handle)
                self._csv.writerow(["id", "probability", "label"] + (["text"] if with_text else []))
        except OSError as err:
            self.discard()
            blocking = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
            reason = f"{blocking} is a file, not a folder" if blocking else err.strerror or err
            raise UserError(f"{path}: cannot write there ({reason})") from err
        except BaseException:
            self.discard()
            raise

    def write(self, texts: list[str], probs: list[float], threshold: float) -> None:
        ids = range(self.rows, self.rows + len(texts))
        labels = ["positive" if p >= threshold else "negative" for p in probs]
        columns = {"id": list(ids), "probability": probs, "label": labels, **({"text": texts} if self.with_text else {})}
        if self._parquet is not None:
            import pyarrow as pa

            self._parquet.write_table(pa.table(columns, schema=self.schema))
        elif self.suffix == ".csv":
            self._csv.writerows(zip(*columns.values()))
        else:
            for values in zip(*columns.values()):
                self._handle.write(json.dumps(dict(zip(columns, values)), ensure_ascii=False) + "\n")
        self.rows += len(texts)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self._handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self._parquet is not None:  # closed first: left open, it would write its footer to a closed file when collected
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()
        with contextlib.suppress(OSError):  # (never made: its folder could not be)
            self.tmp.unlink()


def latest_checkpoint(configs: list[str], which: str = "best_or_last") -> Path:
    """The best checkpoint of the newest run of an experiment (else its last.ckpt), or its best / last."""
    from ..training import logged_runs_root, read_config

    root = logged_runs_root(read_config(configs).trainer)
    if root is None:
        raise UserError(f"{configs[-1]}: no logger save_dir in the config; pass --ckpt_path instead")
    found = newest_checkpoint(root, which)
    if not found:
        kind = "" if which == "best_or_last" else f"{which} "
        raise UserError(f"no {kind}checkpoint found under {root}; train first: imdb-lightning fit --config {configs[-1]}")
    return found[1]


def parse(argv: list[str]) -> tuple[ArgumentParser, argparse.Namespace]:
    """The options, each checked; the parser too, for the checks that come after the reviews' file is opened."""
    parser = ArgumentParser(
        prog="imdb-lightning predict",
        description="Classify raw reviews with a trained checkpoint: label, P(positive) and the review.",
    )
    parser.add_argument("texts", nargs="*", help="reviews to classify")
    parser.add_argument("--ckpt_path", help="checkpoint to use, or a run folder of `imdb-lightning linear` "
                        "(a linear reference, or its stack with recurrent runs)")
    parser.add_argument("--config", action="append", default=[],
                        help="experiment YAML (repeatable, as for fit): use the best checkpoint of its newest run")
    parser.add_argument("--file", help=f"reviews: {', '.join(READ_FORMATS)} (one per line, or a 'text' column)")
    parser.add_argument("--output", help=f"write predictions to {', '.join(WRITE_FORMATS)} instead of printing")
    parser.add_argument("--with_text", action="store_true", help="also write each review's text to --output")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="reviews per forward pass (try more on a GPU)")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(positive) at or above which a review is positive")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    opts = parser.parse_args(argv)
    if not opts.ckpt_path and not opts.config:
        parser.error("give --ckpt_path, or --config to use the newest run of that experiment")
    if bool(opts.texts) == bool(opts.file):
        parser.error("pass reviews as arguments or with --file (one of the two)")
    if opts.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {opts.batch_size}")
    if not 0 <= opts.threshold <= 1:
        parser.error(f"--threshold is a probability in [0, 1], got {opts.threshold}")
    if opts.with_text and not opts.output:
        parser.error("--with_text goes with --output (printed predictions always show the review)")
    if opts.output and opts.file and Path(opts.output).resolve() == Path(opts.file).resolve():
        parser.error(f"--output {opts.output} is the --file being read: the predictions would replace the reviews; "
                     "name another file")
    return parser, opts


def main(argv: list[str]) -> None:
    from .predictor import load

    parser, opts = parse(argv)
    texts, total = read_texts(opts.file) if opts.file else (iter(opts.texts), len(opts.texts))
    if opts.ckpt_path in ("best", "last"):
        if not opts.config:
            parser.error(f"--ckpt_path {opts.ckpt_path} names a checkpoint of an experiment's newest run: give its --config too")
        ckpt = latest_checkpoint(opts.config, opts.ckpt_path)
    else:
        ckpt = opts.ckpt_path or latest_checkpoint(opts.config)
    predictor = load(ckpt, device=opts.device)  # before the output file exists: a bad checkpoint leaves nothing
    print(f"# checkpoint: {ckpt}", file=sys.stderr)
    classify(predictor, texts, total, opts)


def classify(predictor, texts: Iterator[str], total: Optional[int], opts: argparse.Namespace) -> None:
    """The reviews' labels and probabilities, printed or written to --output (whole, or not at all)."""
    from tqdm import tqdm

    writer = None
    try:
        writer = Writer(opts.output, opts.with_text) if opts.output else None
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
            replaced = Path(opts.output).exists()
            writer.close()
    except BaseException:
        if writer:
            writer.discard()
        raise
    if writer:
        print(f"wrote {writer.rows} predictions to {opts.output}" + (" (replacing the file that was there)" if replaced else ""),
              file=sys.stderr)
