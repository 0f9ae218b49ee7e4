"""Every reader of users' files reads what was written: with or without a UTF-8 byte-order mark (what Excel
and Notepad put first), every review, in order, nothing dropped or changed."""

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imdb_lightning.data.sources import AclImdbSource, FileSource
from imdb_lightning.serve.predict import read_texts

BOM = b"\xef\xbb\xbf"
TEXTS = ["Ünïcode first, “quoted” and, commas", 'second "with" quotes', "", "a line\nbreak inside", "last"]
LABELS = [1, 0, 1, 0, 1]
FILMS = ["tt0000001", "tt0000002", "tt0000001", "tt0000003", "tt0000002"]


def encoded(fmt: str, texts: list, labels: list, films=None) -> bytes:
    """A reviews file as bytes: csv, jsonl (one record a line), json (an array of records) or txt (texts alone)."""
    records = [{"text": t, "label": y, **({"movie": f} if films else {})} for t, y, f in zip(texts, labels, films or texts)]
    if fmt == "txt":
        return "".join(t + "\n" for t in texts).encode()
    if fmt == "json":
        return json.dumps(records, ensure_ascii=False).encode()
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


@pytest.mark.parametrize("mark", [BOM, b""], ids=["bom", "plain"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_training_files_read_the_same_with_a_byte_order_mark(tmp_path, fmt, mark):
    path = tmp_path / f"reviews.{fmt}"
    path.write_bytes(mark + encoded(fmt, TEXTS, LABELS, FILMS))
    reviews = FileSource([str(path)], []).load("train")
    assert reviews.texts == TEXTS and reviews.labels.tolist() == LABELS and reviews.groups.tolist() == FILMS
    unlabelled = FileSource([], [], unlabelled_files=[str(path)]).load("unlabelled")  # what pretrain reads
    assert unlabelled.texts == TEXTS


@pytest.mark.parametrize("mark", [BOM, b""], ids=["bom", "plain"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt"])
def test_files_to_predict_read_the_same_with_a_byte_order_mark(tmp_path, fmt, mark):
    path = tmp_path / f"reviews.{fmt}"
    texts = [t.replace("\n", " ") for t in TEXTS] if fmt == "txt" else TEXTS  # txt: one review a line
    path.write_bytes(mark + encoded(fmt, texts, LABELS))
    assert list(read_texts(str(path))[0]) == texts


def test_an_aclimdb_folder_reads_the_same_with_byte_order_marks(tmp_path):
    for name, label in (("neg", 0), ("pos", 1)):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for i, text in enumerate(TEXTS[:3]):
            (folder / f"{i}_{2 + 6 * label}.txt").write_bytes(BOM + f"{name}: {text}".encode())
        urls = "".join(f"http://www.imdb.com/title/tt000000{i}/usercomments\n" for i in range(3))
        (tmp_path / "train" / f"urls_{name}.txt").write_bytes(BOM + urls.encode())
    reviews = AclImdbSource(str(tmp_path)).load("train")
    assert reviews.texts == [f"{name}: {t}" for name in ("neg", "pos") for t in TEXTS[:3]]
    assert reviews.groups.tolist() == [f"tt000000{i}" for i in range(3)] * 2


# any text a UTF-8 file can hold (no NUL, which pyarrow's csv reader and JSON text refuse alike)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["csv", "jsonl", "json"]), rows=st.lists(st.tuples(TEXT, st.sampled_from([0, 1])), min_size=1,
                                                                   max_size=10), mark=st.sampled_from([BOM, b""]))
def test_every_review_of_a_well_formed_file_is_read_back_in_order(tmp_path_factory, fmt, rows, mark):
    path = tmp_path_factory.mktemp("r") / f"reviews.{fmt}"
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    path.write_bytes(mark + encoded(fmt, texts, labels))
    reviews = FileSource([str(path)], []).load("train")  # a well-formed file is never refused
    assert reviews.texts == texts and reviews.labels.tolist() == labels
    if fmt != "json":
        assert list(read_texts(str(path))[0]) == texts
