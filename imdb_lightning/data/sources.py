"""Where reviews come from: the Hugging Face hub, local files, an aclImdb/ folder, or generated text.

Each source is one small class with `load(split)` -> `Reviews` and `fingerprint(split)`, what
identifies its data for the tokenization cache. Loaders raise `DataError` with a message that
names the file, column, row or value at fault.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError
from .synthetic import synthetic_reviews

PRETRAIN_HUB_HELP = (
    "To pretrain without the hub, point at local reviews instead: --data.unlabelled_files unsup.parquet "
    "(csv/json/jsonl/parquet with a 'text' column; --data.train_files adds labelled ones), --data.aclimdb_dir "
    "path/to/aclImdb, or --data.source synthetic."
)
HUB_HELP = (
    "To train without the hub, point at local data instead: "
    "--data.train_files reviews.parquet (csv/json/jsonl/parquet with 'text' and 'label' columns), "
    "--data.aclimdb_dir path/to/aclImdb, or --data.source synthetic."
)
LABEL_WORDS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1, "false": 0, "true": 1}
FILE_FORMATS = (".parquet", ".csv", ".json", ".jsonl")
FILM_ID = re.compile(r"tt\d+")


@dataclass
class Reviews:
    texts: list[str]
    labels: np.ndarray  # (n,) int8, 0 negative / 1 positive; -1 where unlabelled
    groups: Optional[np.ndarray] = None  # (n,) film id per review, None when the films are unknown

    def subset(self, index: np.ndarray) -> Reviews:
        groups = self.groups[index] if self.groups is not None else None
        return Reviews([self.texts[i] for i in index], self.labels[index], groups)

    def __len__(self) -> int:
        return len(self.texts)


def normalise_labels(values: list, where: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int8)
    for row, value in enumerate(values):
        key = str(int(value)) if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()) else str(value)
        key = key.strip().lower()
        if value is None or (isinstance(value, float) and value != value):
            raise DataError(f"{where}: row {row} has no label (empty, null or NaN); every review needs one (0/1, neg/pos)")
        if key not in LABEL_WORDS:
            raise DataError(
                f"{where}: label {value!r} in row {row} is not a sentiment label; use 0/1, neg/pos or negative/positive"
            )
        out[row] = LABEL_WORDS[key]
    return out


def check_texts(texts: list, where: str, empty_ok: bool = False) -> list[str]:
    if not texts and not empty_ok:
        raise DataError(f"{where}: no reviews found")
    texts = ["" if text is None else text for text in texts]  # an empty cell is an empty review
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{where}: text in row {row} is {type(text).__name__} {text!r}, not a string")
    return texts


def read_table(path: str, columns: dict[str, bool]):
    """A data file as a pyarrow Table with `columns` ({name: required}); text-like columns as strings.

    pyarrow reads the file directly: no Arrow copy of it is kept anywhere (the `datasets`
    readers cache one under ~/.cache/huggingface for every file they read).
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if file.is_dir():
        raise DataError(f"{path}: is a folder; --data.train_files / test_files name files (an aclImdb/ folder goes to "
                        "--data.aclimdb_dir)")
    if suffix not in FILE_FORMATS:
        raise DataError(f"{path}: unknown file type {file.suffix!r}; use one of {', '.join(FILE_FORMATS)}")
    if not file.is_file():
        raise DataError(f"{path}: no such file" if not file.exists() else f"{path}: not a file")
    if file.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        table = _read_arrow(path, file, suffix, columns)
        table.validate(full=True)  # text that is not UTF-8 fails here, not later when a column is read
    except DataError:
        raise
    except Exception as err:  # the readers raise many kinds; the message is what matters
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot read it as {suffix.lstrip('.')}: {reason}") from err
    _check_columns(path, suffix, table.column_names, columns)
    return table


def _read_arrow(path: str, file: Path, suffix: str, columns: dict[str, bool]):
    import pyarrow as pa

    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(file)
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        strings = {name: pa.string() for name in columns if name != "label"}
        return pacsv.read_csv(file, convert_options=pacsv.ConvertOptions(column_types=strings))
    if file.read_bytes()[:64].removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):  # a JSON array of records
        records = json.loads(file.read_text(encoding="utf-8-sig"))
        try:
            return pa.Table.from_pylist(records)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            table = _mixed_types(path, records, columns)
            if table is None:
                raise
            return table
    import pyarrow.json as pajson

    try:
        return pajson.read_json(file)
    except Exception:
        _first_bad_json_line(file)  # names the line, if one is at fault
        table = _mixed_types(path, _json_lines(file), columns)
        if table is None:
            raise
        return table


def _check_columns(path: str, suffix: str, found: list[str], columns: dict[str, bool]) -> None:
    twice = next((name for name in columns if found.count(name) > 1), None)
    if twice:
        raise DataError(f"{path}: {found.count(twice)} columns are named {twice!r}; keep one (or rename the others)")
    missing = [name for name, required in columns.items() if required and name not in found]
    if missing:
        delimiter = next((name for char, name in (("\t", "tabs"), (";", "semicolons"), ("|", "bars"))
                          if suffix == ".csv" and any(char in c for c in found)), None)
        hint = f" (the columns look separated by {delimiter}: a .csv here is comma-separated)" if delimiter else ""
        listed = repr(", ".join(found)) if delimiter else ", ".join(found)
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; columns found: {listed}{hint}")


def _json_lines(file: Path) -> list:
    with file.open(encoding="utf-8-sig") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _mixed_types(path: str, records: list, columns: dict[str, bool]):
    """JSON records whose column mixes types (a film id now a number, now a string), which pyarrow's readers
    refuse, as a table of the columns read: the film and label as text (as a csv reads them), a text that is
    not a string named by its row. None when the records are not all objects."""
    import pyarrow as pa

    if not records or not all(isinstance(r, dict) for r in records):
        return None
    out = {}
    for name in (name for name in columns if any(name in r for r in records)):
        values = [r.get(name) for r in records]
        if name == "text":
            check_texts(values, path)
        else:
            values = [None if v is None else _as_text(v) for v in values]
        out[name] = pa.array(values, type=pa.string())
    return pa.table(out)


def _as_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def _first_bad_json_line(file: Path) -> None:
    with file.open(encoding="utf-8-sig", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{file}: line {number} is not JSON ({err.msg})") from None


class FileSource:
    """parquet/csv/json/jsonl files with `text` and `label` columns, and the film of each review in
    `group_column` (`movie` by default, used when the files have it)."""

    def __init__(self, train_files: list[str], test_files: list[str], group_column: Optional[str] = None,
                 unlabelled_files: Optional[list[str]] = None):
        self.files = {"train": train_files or [], "test": test_files or [], "unlabelled": unlabelled_files or []}
        self.group_column, self.group_required = group_column or "movie", group_column is not None

    def fingerprint(self, split: str) -> list:
        return ["files", fingerprint(self.files[split]), self.group_column]

    def load(self, split: str) -> Reviews:
        files = self.files[split]
        if not files:
            flag = {"train": "--data.train_files", "test": "--data.test_files", "unlabelled": "--data.unlabelled_files"}
            hint = " (test never uses the validation split)" if split == "test" else ""
            raise DataError(f"no {split} data: pass {flag[split]}{hint}")
        labelled = split != "unlabelled"
        parts = []
        for path in files:
            table = read_table(path, {"text": True, "label": labelled, self.group_column: self.group_required})
            texts = check_texts(table.column("text").to_pylist(), path)
            labels = normalise_labels(table.column("label").to_pylist(), path) if labelled else np.full(len(texts), -1, np.int8)
            groups = None
            if self.group_column in table.column_names:
                films = table.column(self.group_column).to_pylist()
                groups = np.array(["" if g is None else str(g) for g in films], dtype=object)
            parts.append(Reviews(texts, labels, groups))
        return concatenate(parts)


def concatenate(parts: list[Reviews]) -> Reviews:
    """One Reviews from several; films stay known only if every part knows them."""
    groups = None
    if all(p.groups is not None for p in parts):
        groups = np.concatenate([p.groups for p in parts])
    return Reviews([t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts]), groups)


class AclImdbSource:
    """The Stanford `aclImdb/` folder: {train,test}/{pos,neg}/ID_RATING.txt, unlabelled reviews in
    train/unsup/; line ID of urls_pos.txt / urls_neg.txt / urls_unsup.txt names the review's film."""

    FOLDERS = {"train": ("train", ((0, "neg"), (1, "pos"))), "test": ("test", ((0, "neg"), (1, "pos"))),
               "unlabelled": ("train", ((-1, "unsup"),))}

    def __init__(self, root: str):
        self.root = Path(root)

    def fingerprint(self, split: str) -> list:
        return ["aclimdb", fingerprint([str(self.root / self.FOLDERS[split][0])])]

    def load(self, split: str) -> Reviews:
        folder_name, classes = self.FOLDERS[split]
        texts, labels, groups = [], [], []
        films_known = True
        for label, name in classes:
            folder = self.root / folder_name / name
            if not folder.is_dir():
                expected = " and ".join(f"{folder_name}/{n}" for _, n in classes)
                raise DataError(f"{folder}: missing; an aclImdb folder holds {expected}")
            films = self._films(folder_name, name)
            films_known &= films is not None
            files = sorted(folder.glob("*.txt"), key=_review_number)
            unnamed = [f.name for f in files if films is not None and not 0 <= _review_number(f) < len(films)]
            if unnamed:  # each such review would be a "film" of its own, and the grouped split would leak films
                raise DataError(f"{self.root / folder_name / f'urls_{name}.txt'}: {len(films)} lines for {len(files)} reviews "
                                f"in {folder} ({unnamed[0]} has no line): line N must name the film of review N_*.txt; "
                                "restore the file, or remove it to split by review (--data.val_split random)")
            for file in files:
                texts.append(file.read_text(encoding="utf-8-sig", errors="replace"))  # (a byte-order mark is no text)
                labels.append(label)
                groups.append(films[_review_number(file)] if films is not None else f"{name}/{file.stem}")
        return Reviews(check_texts(texts, f"{self.root}/{folder_name}"), np.array(labels, dtype=np.int8),
                       np.array(groups, dtype=object) if films_known else None)

    def _films(self, folder: str, name: str) -> Optional[list[str]]:
        urls = self.root / folder / f"urls_{name}.txt"
        if not urls.is_file():
            return None
        films = []
        for line in urls.read_text(encoding="utf-8-sig", errors="replace").splitlines():
            match = FILM_ID.search(line)
            films.append(match.group(0) if match else line.strip())
        return films


def _review_number(file: Path) -> int:
    head = file.stem.split("_")[0]
    return int(head) if head.isdigit() else -1


class SyntheticSource:
    """The generated corpus (see synthetic.py): no download, labels that depend on word order."""

    def __init__(self, size: int, median_words: int, seed: int):
        self.size, self.median_words, self.seed = size, median_words, seed

    def fingerprint(self, split: str) -> list:
        return ["synthetic", self.size, self.median_words, self.seed, split]

    def load(self, split: str) -> Reviews:
        size, seed = {"train": (self.size, self.seed), "test": (self.size // 2, self.seed + 1),
                      "unlabelled": (self.size, self.seed + 2)}[split]
        texts, labels = synthetic_reviews(size, seed=seed, median_words=self.median_words)
        labels = np.array(labels, dtype=np.int8) if split != "unlabelled" else np.full(size, -1, np.int8)
        return Reviews(texts, labels)


class HubSource:
    """A dataset on the Hugging Face hub (`stanfordnlp/imdb`: splits train, test, unsupervised).
    Its rows carry no film ids, so validation there is a random split."""

    SPLITS = {"train": "train", "test": "test", "unlabelled": "unsupervised"}

    def __init__(self, name: str, offline_help: str = HUB_HELP):
        self.name, self.offline_help = name, offline_help

    def fingerprint(self, split: str) -> list:
        return ["hub", self.name, split]

    def load(self, split: str) -> Reviews:
        hub_split = self.SPLITS[split]
        # `datasets` retries for ~25 s before failing offline; a 3 s probe answers first.
        if not hub_reachable():
            raise DataError(f"cannot reach the Hugging Face hub to download {self.name!r}. {self.offline_help}")
        import datasets

        try:
            data = datasets.load_dataset(self.name, split=hub_split)
        except Exception as err:
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise DataError(
                f"loading {self.name!r} ({hub_split}) from the Hugging Face hub failed: {reason}. {self.offline_help}"
            ) from err
        table = data.with_format("arrow")  # whole Arrow columns, not rows one by one
        where = f"{self.name}:{hub_split}"
        if "text" not in table.column_names:
            raise DataError(f"{where}: no 'text' column; columns found: {', '.join(table.column_names)}")
        texts = check_texts(table["text"].to_pylist(), where)
        if split == "unlabelled":
            return Reviews(texts, np.full(len(texts), -1, np.int8))
        return Reviews(texts, normalise_labels(table["label"].to_pylist(), where))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether an HTTPS request to the hub gets an answer (any status), within `timeout` seconds.

    A TCP connection alone is not enough: a proxy or firewall may accept it and then fail TLS,
    after which `datasets` retries for half a minute.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # the user asked for the local cache; let `datasets` use it
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:  # an HTTP answer, even an error status, means the hub is there
        return True
    except (OSError, ValueError):  # refused, unresolvable, TLS failure, timeout
        return False


def fingerprint(paths: list[str]) -> list:
    """What identifies local data for the cache: path, size and modification time."""
    out = []
    for path in paths:
        p = Path(path)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        stats = [f.stat() for f in files if f.is_file()]
        newest = max((s.st_mtime_ns for s in stats), default=0)
        out.append([os.path.abspath(path), len(stats), sum(s.st_size for s in stats), newest])
    return out


def write_reviews(texts: list[str], labels: list[int], path: Path, groups: Optional[list[str]] = None) -> str:
    """Save reviews as a parquet file the `files` source reads (benchmarks and tests use it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"text": texts, "label": labels, **({"movie": groups} if groups is not None else {})}
    pq.write_table(pa.table(columns), path)
    return str(path)


def open_source(source: Optional[str], *, train_files: list[str] = (), test_files: list[str] = (),
                unlabelled_files: list[str] = (), group_column: Optional[str] = None, aclimdb_dir: Optional[str] = None,
                hub_name: str = "stanfordnlp/imdb", synthetic_size: int = 4000, synthetic_median_words: int = 60,
                seed: int = 0, hub_help: str = HUB_HELP) -> tuple[str, object]:
    """(name, source) for the data options of `fit` and `pretrain`: `files` when files are given, `aclimdb`
    when a folder is, else the hub (which needs the network)."""
    name = source or ("files" if train_files or test_files or unlabelled_files else "aclimdb" if aclimdb_dir else "hub")
    if name == "aclimdb" and not aclimdb_dir:
        raise ConfigError("data.source is 'aclimdb' but data.aclimdb_dir is not set")
    return name, {
        "files": lambda: FileSource(list(train_files), list(test_files), group_column, list(unlabelled_files)),
        "aclimdb": lambda: AclImdbSource(aclimdb_dir),
        "synthetic": lambda: SyntheticSource(synthetic_size, synthetic_median_words, seed),
        "hub": lambda: HubSource(hub_name, hub_help),
    }[name]()
