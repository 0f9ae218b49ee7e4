"""Property-based tests (Hypothesis): random files, configs and numbers end in a correct result or in
one line `imdb-lightning: error: …`, never in a traceback or a file left behind.

A few hundred examples by default; `pytest -m slow tests/test_properties.py` runs ten times as many.
"""

import csv
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imdb_lightning.cli import cli_main
from imdb_lightning.data.sources import FileSource
from imdb_lightning.errors import UserError
from imdb_lightning.serve.predict import read_texts
from imdb_lightning.training import load_yaml

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DEEP = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

LABELS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "Negative": 0, "POSITIVE": 1, " pos ": 1}
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
ENCODINGS = st.sampled_from(["utf-8", "latin-1"])
rows = st.lists(st.tuples(texts, st.sampled_from([*LABELS, "maybe", "7", ""])), min_size=1, max_size=12)


def write(folder, fmt: str, data: list, bom: bool, encoding: str) -> str:
    path = folder / f"reviews.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"text": [t for t, _ in data], "label": [y for _, y in data]}), path)
        return str(path)
    out = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows(data)
    else:
        out.write("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in data))
    mark = "\ufeff".encode() if bom and encoding == "utf-8" else b""  # (latin-1 has no byte-order mark)
    path.write_bytes(mark + out.getvalue().encode(encoding, errors="replace"))
    return str(path)


def check_reader(tmp_path, fmt, data, bom, encoding):
    path = write(tmp_path, fmt, data, bom, encoding)
    try:
        reviews = FileSource([path], []).load("train")
    except UserError as err:  # one line naming the file
        assert "\n" not in str(err) and path in str(err), str(err)
        return
    assert len(reviews) == len(data)
    assert reviews.labels.tolist() == [LABELS[y] for _, y in data]  # read: every label was a known spelling
    if encoding == "utf-8" and fmt != "csv":  # csv may normalise line endings inside quotes
        assert reviews.texts == [t for t, _ in data]


@QUICK
@given(fmt=st.sampled_from(["csv", "jsonl", "parquet"]), data=rows, bom=st.booleans(), encoding=ENCODINGS)
def test_training_files_are_read_or_refused_in_one_line(tmp_path_factory, fmt, data, bom, encoding):
    check_reader(tmp_path_factory.mktemp("r"), fmt, data, bom, encoding)


@pytest.mark.slow
@DEEP
@given(fmt=st.sampled_from(["csv", "jsonl", "parquet"]), data=rows, bom=st.booleans(), encoding=ENCODINGS)
def test_training_files_deeper(tmp_path_factory, fmt, data, bom, encoding):
    check_reader(tmp_path_factory.mktemp("r"), fmt, data, bom, encoding)


def check_predict_reader(folder, fmt, lines, bom):
    path = folder / f"p.{fmt}"
    if fmt == "txt":
        content = "".join(line.replace("\n", " ").replace("\r", " ") + "\n" for line in lines)
    elif fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([["text"], *[[line] for line in lines]])
        content = out.getvalue()
    else:
        content = "".join(json.dumps({"text": line}) + "\n" for line in lines)
    path.write_bytes(("\ufeff" if bom else "").encode() + content.encode())
    got = list(read_texts(str(path))[0])
    assert len(got) == len(lines) or fmt == "jsonl" and len(got) <= len(lines)
    if got and fmt != "csv":
        assert not got[0].startswith("\ufeff")  # a byte-order mark is never part of the first review


@QUICK
@given(fmt=st.sampled_from(["txt", "csv", "jsonl"]), lines=st.lists(texts.filter(lambda t: t.strip()), min_size=1, max_size=8),
       bom=st.booleans())
def test_predict_readers_strip_a_byte_order_mark(tmp_path_factory, fmt, lines, bom):
    check_predict_reader(tmp_path_factory.mktemp("p"), fmt, lines, bom)


# --- the YAML / config layer -----------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False), texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
                      max_leaves=6)
configs = st.one_of(values, st.dictionaries(st.sampled_from(["trainer", "model", "data", "base", "seed_everything"]), values,
                                            max_size=4))


def check_yaml(folder, content):
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(content))
    try:
        config = load_yaml(str(path))
    except UserError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert isinstance(config, dict) and config
    for key in ("trainer", "model", "data"):
        assert config.get(key) is None or isinstance(config[key], dict)


@QUICK
@given(content=configs)
def test_configs_of_any_shape_are_read_or_refused_in_one_line(tmp_path_factory, content):
    check_yaml(tmp_path_factory.mktemp("y"), content)


@pytest.mark.slow
@DEEP
@given(content=configs)
def test_configs_deeper(tmp_path_factory, content):
    check_yaml(tmp_path_factory.mktemp("y"), content)


# --- numeric options of the command line (the out-of-range side: no run starts) ---------------------
@QUICK
@given(seed=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)))
def test_seeds_out_of_range_are_one_line(seed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("s")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with pytest.raises(SystemExit) as exit:
            cli_main(["sweep", "--encoders", "lstm", "--seeds", str(seed), "--config", "experiments/lstm.yaml"])
    finally:
        os.chdir(cwd)
    assert str(exit.value.code).startswith("imdb-lightning: error: --seeds: a seed is between 0 and 4294967295")
    assert not list(folder.iterdir())


@QUICK
@given(option=st.sampled_from(["--steps", "--rounds", "--batch_size", "--max_length", "--host_bound_rounds"]),
       value=st.integers(max_value=0))
def test_bench_counts_below_one_are_one_line(option, value, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "b.json"
    with pytest.raises(SystemExit) as exit:
        cli_main(["bench", option, str(value), "--out", str(out)])
    expected = f"imdb-lightning: error: {option} must be at least 1, got {value} (see imdb-lightning bench --help)"
    assert str(exit.value.code) == expected
    assert not out.exists()
