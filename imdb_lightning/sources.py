"""Raw reviews from the hub, local files, an aclImdb folder or the synthetic corpus.

Every loader returns (texts, labels) with labels as 0/1 ints, or raises `DataError`
with a message that names the file, column, row or value at fault.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import DataError

HUB_HELP = (
    "To train without the hub, point at local data instead: "
    "--data.train_files reviews.parquet (csv/json/jsonl/parquet with 'text' and 'label' columns), "
    "--data.aclimdb_dir path/to/aclImdb, or --data.source synthetic."
)
LABEL_WORDS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1, "false": 0, "true": 1}
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def normalise_labels(values, where: str) -> list[int]:
    out = []
    for row, value in enumerate(values):
        key = str(value).strip().lower() if not isinstance(value, bool) else str(int(value))
        if isinstance(value, float) and value.is_integer():
            key = str(int(value))
        if key not in LABEL_WORDS:
            raise DataError(
                f"{where}: label {value!r} in row {row} is not a sentiment label; "
                "use 0/1, neg/pos or negative/positive"
            )
        out.append(LABEL_WORDS[key])
    return out


def _check_reviews(texts: list, labels: list[int], where: str) -> tuple[list[str], list[int]]:
    if not texts:
        raise DataError(f"{where}: no reviews found")
    texts = ["" if text is None else text for text in texts]  # an empty cell is an empty review
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{where}: text in row {row} is {type(text).__name__} {text!r}, not a string")
    return texts, labels


def _columns(data, where: str) -> tuple[list[str], list[int]]:
    # Whole Arrow columns: iterating `data["text"]` goes row by row through datasets' formatting,
    # 2.5 of the 12.5 s a cold start on 50,000 reviews took here.
    table = data.with_format("arrow")
    return _check_reviews(table["text"].to_pylist(), normalise_labels(table["label"].to_pylist(), where), where)


def load_files(paths: list[str]) -> tuple[list[str], list[int]]:
    from datasets import Dataset

    texts, labels = [], []
    for path in paths:
        file = Path(path)
        fmt = FILE_FORMATS.get(file.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: unknown file type {file.suffix!r}; use one of {', '.join(FILE_FORMATS)}")
        if not file.is_file():
            raise DataError(f"{path}: no such file")
        if file.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")
        try:
            data = getattr(Dataset, f"from_{fmt}")(str(file))
        except Exception as err:  # the readers raise many kinds; the message is what matters
            raise DataError(f"{path}: cannot read it as {fmt}: {err}") from err
        missing = {"text", "label"} - set(data.column_names)
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; columns found: {', '.join(data.column_names)}"
            )
        file_texts, file_labels = _columns(data, path)
        texts += file_texts
        labels += file_labels
    return texts, labels


def load_aclimdb(root: str, split: str) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for label, name in ((0, "neg"), (1, "pos")):
        folder = Path(root) / split / name
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; an aclImdb folder holds {split}/pos and {split}/neg")
        for file in sorted(folder.glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return _check_reviews(texts, labels, f"{root}/{split}")


def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # the user asked for the local cache; let `datasets` use it
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(name: str, split: str) -> tuple[list[str], list[int]]:
    # `datasets` retries for ~25 s before failing offline; a 3 s probe answers first.
    if not hub_reachable():
        raise DataError(f"cannot reach the Hugging Face hub to download {name!r}. {HUB_HELP}")
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:
        raise DataError(f"loading {name!r} ({split}) from the Hugging Face hub failed: {err}. {HUB_HELP}") from err
    return _columns(data, f"{name}:{split}")


def fingerprint(paths: list[str]) -> list:
    """What identifies local data for the cache: path, size and modification time."""
    out = []
    for path in paths:
        p = Path(path)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        stats = [f.stat() for f in files if f.is_file()]
        out.append([os.path.abspath(path), len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)])
    return out


def write_reviews(texts: list[str], labels: list[int], path: Path) -> str:
    """Save reviews as a parquet file the `files` source reads (benchmarks and diagnostics use it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return str(path)
