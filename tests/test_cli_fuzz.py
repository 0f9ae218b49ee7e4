"""The command line itself, fuzzed: Hypothesis draws whole commands (fit, validate, test, predict, compare,
linear, sweep, tune) from a grammar of their real options and runs them in-process on tiny generated data.

Every command must end one of two ways: exit 0 with the outputs it promises, or a non-zero exit with exactly
one line `imdb-lightning…: error: …`. Never a traceback, never a changed input file, never a run folder
without a status in its run.json (or one still "running" after the command returned).

The grammar is read from the code: the data, model and encoder options from the signatures LightningCLI
reads, the other commands' options from the parsers they build (caught as they parse), so a new option is
fuzzed the day it is added. A few dozen examples run by default; `pytest -m slow tests/test_cli_fuzz.py`
runs many more. Signals go to real processes: a few subprocess cases at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import time
import typing
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import EXPERIMENTS, QUICKSTART, SMALL, SMALL_SETS
from imdb_lightning import arguments
from imdb_lightning.cli import cli_main
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RecurrentEncoder

IN, TMP = "{in}", "{tmp}"  # the inputs folder (never to change) and the example's own folder
ERROR = re.compile(r"imdb-lightning( [\w-]+)*: error: \S")

# --- the grammar ------------------------------------------------------------------------------------
FILES = [f"{IN}/{name}" for name in (
    "good.parquet", "good.csv", "good.jsonl", "nofilms.parquet", "mixed.jsonl", "twolabels.csv", "brs.csv", "few.parquet",
    "binary.txt", "reviews.txt", "empty.csv", "cols.csv", "corrupt.parquet", "sentiment.ckpt", "junk.ckpt", "linear_run",
)] + ["nowhere.parquet", IN, "/proc/nowhere/x.csv"]
FOLDERS = [f"{TMP}/new/folder", f"{IN}/good.csv", "/proc/nowhere", TMP]  # places a command may write to
INTS, HUGE = ["-1", "0", "1", "2", "5"], "1000000000"
# sizes whose huge value is refused quickly (memory check) or harmless; others stay small, so an example
# never waits on a legitimately enormous job (a billion synthetic reviews)
HUGE_OK = {"vocab_size", "embed_dim", "hidden_size", "max_length", "batch_size", "eval_batch_size", "bigram_buckets",
           "split_seed", "min_frequency", "seed_everything"}
FLOATS = ["-0.5", "0", "0.01", "0.5", "1", "1.5", "nan", "inf", "x"]
WORDS = ["", "x", "movie", "text", "label", "null", "é", "-1"]
LEFT_OUT = {
    "data.hub_name": "the hub needs the network: its offline refusal is tested in test_bad_inputs",
    "data.source=hub": "the same",
    "data.cache_dir": "drawn from FOLDERS, never the inputs folder (a cache there would change it, as asked)",
    "model.encoder.init_args.vocab_size": "linked from data.vocab_size",
    "model.encoder.init_args.num_layers=huge": "a billion layers is a legitimately enormous job",
}
TRAINER = ("max_epochs", "max_steps", "min_epochs", "limit_train_batches", "limit_val_batches", "limit_test_batches",
           "val_check_interval", "check_val_every_n_epoch", "accumulate_grad_batches", "gradient_clip_val",
           "log_every_n_steps", "num_sanity_val_steps", "precision", "accelerator", "deterministic", "default_root_dir")


def values_for(name: str, hint) -> list[str]:
    """Command-line values for an option of this type: ordinary ones, edge ones and wrong ones."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    leaf = name.rsplit(".", 1)[-1]
    if origin is typing.Union:
        out = ["null"] if type(None) in args else []
        for arg in args:
            out += [v for v in values_for(name, arg) if v not in out] if arg is not type(None) else []
        return out
    if origin is typing.Literal:
        return [str(a) for a in args if f"{name}={a}" not in LEFT_OUT] + ["bogus"]
    if hint is bool:
        return ["true", "false", "maybe"]
    if hint is int:
        return INTS + ([HUGE] if leaf in HUGE_OK else []) + ["x"]
    if hint is float:
        return FLOATS
    if hint is str or origin is list:
        if leaf.endswith(("files", "file", "_dir", "_from", "pretrained", "ckpt_path")):
            return FILES if "cache" not in leaf else FOLDERS
        return WORDS
    if leaf == "precision":
        return ["32-true", "64-true", "bf16-mixed", "16-mixed", "bogus"]
    if leaf == "accelerator":
        return ["cpu", "auto", "gpu", "tpu", "bogus"]
    return []


def signature_options(prefix: str, cls, names=None) -> dict[str, list[str]]:
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        option = f"{prefix}.{name}"
        if name == "self" or (names and name not in names) or option in LEFT_OUT:
            continue
        values = values_for(option, hints.get(name, parameter.annotation))
        if option == "model.encoder.init_args.num_layers":
            values = [v for v in values if v != HUGE]
        if values:
            out[option] = values
    return out


def lightning_options() -> dict[str, list[str]]:
    """fit / validate / test: what their LightningCLI parses, from the classes it reads."""
    options = {**signature_options("data", IMDBDataModule), **signature_options("model", SentimentClassifier),
               **signature_options("model.encoder.init_args", RecurrentEncoder),
               **signature_options("trainer", L.Trainer, TRAINER),
               "model.optimizer.init_args.lr": FLOATS, "model.optimizer.init_args.weight_decay": FLOATS,
               "data.cache_dir": FOLDERS, "seed_everything": values_for("seed_everything", int)}
    options["trainer.precision"] = values_for("precision", None)
    options["trainer.accelerator"] = values_for("accelerator", None)
    options["trainer.default_root_dir"] = FOLDERS
    return options


class Caught(Exception):
    pass


def parser_of(command: str) -> argparse.ArgumentParser:
    """The parser a project command builds, caught as it starts to parse (nothing runs)."""
    def catch(self, *args, **kwargs):
        raise Caught(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(arguments.ArgumentParser, "parse_args", catch)
        patch.setattr(arguments.ArgumentParser, "parse_known_args", catch)
        try:
            cli_main([command])
        except Caught as caught:
            return caught.args[0]
    raise AssertionError(f"imdb-lightning {command} built no ArgumentParser")


def argparse_options(command: str, special: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """({--option: values}, [flags]) of a project command's parser; `special` gives values by option."""
    options, flags = {}, []
    for action in parser_of(command)._actions:
        if not action.option_strings or action.option_strings[0] in ("-h", "--help"):
            continue
        option = action.option_strings[-1]
        if action.nargs == 0:
            flags.append(option)
        elif option in special:
            options[option] = special[option]
        elif action.choices:
            options[option] = [*map(str, action.choices), "bogus"]
        elif action.type in (int, float):
            options[option] = {int: INTS + ["x"], float: FLOATS}[action.type]
        else:
            options[option] = WORDS
    return options, flags


# --- the world: inputs made once, and their fingerprint ---------------------------------------------
def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@contextmanager
def inside(folder: Path):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    inputs, cache = root / "inputs", root / "cache"
    inputs.mkdir()
    texts, labels = synthetic_reviews(160, seed=1)
    films = [f"tt{i // 4:05d}" for i in range(160)]
    pq.write_table(pa.table({"text": texts, "label": labels, "movie": films}), inputs / "good.parquet")
    pq.write_table(pa.table({"text": texts[:60], "label": labels[:60]}), inputs / "nofilms.parquet")
    pq.write_table(pa.table({"text": ["good", "bad"] * 5, "label": [1, 0] * 5}), inputs / "few.parquet")
    pq.read_table(inputs / "good.parquet").to_pandas().to_csv(inputs / "good.csv", index=False)
    rows = [{"text": t, "label": y, "movie": f if i % 3 else i} for i, (t, y, f) in enumerate(zip(texts, labels, films))]
    (inputs / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (inputs / "good.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    (inputs / "twolabels.csv").write_text("text,label,label\ngood,1,1\nbad,0,0\n")
    (inputs / "brs.csv").write_text("text,label\n" + "".join(f"<br /><br />,{i % 2}\n" for i in range(40)))
    (inputs / "binary.txt").write_bytes(bytes(range(256)) * 20)
    (inputs / "reviews.txt").write_text("a fine film\nthe plot was not good .\n\n")
    (inputs / "empty.csv").write_text("")
    (inputs / "cols.csv").write_text("review,sentiment\ngood,1\n")
    (inputs / "corrupt.parquet").write_bytes(b"PAR1" + bytes(range(200)) * 5)
    (inputs / "junk.ckpt").write_bytes(bytes(range(256)) * 10)
    with inside(root):
        cli_main(["fit", "--config", str(QUICKSTART), *SMALL, "--data.cache_dir", str(cache)])
        cli_main(["linear", "--data.source", "synthetic", "--data.synthetic_size", "300", "--models", "nbsvm",
                  "--logdir", str(root / "linear_logs"), "--data.cache_dir", str(cache)])
    run = root / "lightning_logs" / "quickstart" / "version_0"
    shutil.copy(next((run / "checkpoints").glob("best*.ckpt")), inputs / "sentiment.ckpt")
    shutil.copytree(next((root / "linear_logs").glob("*/version_0")), inputs / "linear_run")
    # a log folder for compare: the fit's record and events, and a copy of it whose accuracy is NaN
    logs = root / "compare_logs"
    for name, acc in (("version_0", None), ("version_1", float("nan"))):
        folder = logs / "quickstart" / name
        shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints"))
        if acc is not None:
            record = json.loads((folder / "run.json").read_text())
            (folder / "run.json").write_text(json.dumps({**record, "best_val_acc": acc, "seed": 7}))
    (inputs / "space.yaml").write_text("model.dropout: {uniform: [0.0, 0.5]}\ndata.batch_size: {choice: [16, 32]}\n")
    (inputs / "badspace.yaml").write_text("model.dropout: {uniform: [0.9, 2.0]}\n")
    return {"root": root, "inputs": inputs, "cache": cache, "compare_logs": logs, "fingerprint": fingerprint(inputs)}


# --- commands -----------------------------------------------------------------------------------------
LIGHTNING = lightning_options()
BASES = {  # tiny runs: the quickstart on synthetic reviews, or the LSTM recipe on a file of films
    "synthetic": ["--config", str(QUICKSTART), *SMALL],
    "files": ["--config", str(EXPERIMENTS / "lstm.yaml"), "--data.train_files", f"{IN}/good.parquet", *SMALL[4:],
              "--model.encoder.init_args.embed_dim", "16", "--model.encoder.init_args.hidden_size", "16"],
}
CHECKPOINTS = [f"{IN}/sentiment.ckpt", f"{IN}/junk.ckpt", f"{IN}/linear_run", "nowhere.ckpt", "best", "last", IN]


@st.composite
def flags(draw, options: dict[str, list[str]], most: int = 3) -> list[str]:
    out = []
    if not options:
        return out
    for option in draw(st.lists(st.sampled_from(sorted(options)), max_size=most, unique=True)):
        out += [option if option.startswith("--") else f"--{option}", draw(st.sampled_from(options[option]))]
    return out


def switch(switches: list[str]):
    return st.lists(st.sampled_from(switches), max_size=1) if switches else st.just([])


@st.composite
def lightning_command(draw, command: str) -> list[str]:
    args = [command, *BASES[draw(st.sampled_from(sorted(BASES)))], "--data.cache_dir", "{cache}"]
    if command != "fit":  # (the good checkpoint most often: the others are refused before anything runs)
        args += ["--ckpt_path", draw(st.sampled_from(CHECKPOINTS[:1] * 6 + CHECKPOINTS))]
    return args + draw(flags(LIGHTNING))


@st.composite
def predict_command(draw) -> list[str]:
    options, switches = argparse_options("predict", {
        "--ckpt_path": CHECKPOINTS, "--config": [str(QUICKSTART), f"{IN}/reviews.txt"], "--file": FILES,
        "--output": [f"{TMP}/p.csv", f"{TMP}/p.jsonl", f"{TMP}/p.parquet", f"{TMP}/p.xlsx", TMP, "/proc/nowhere/p.csv"],
        "--device": ["cpu", "cuda", "bogus"], "--batch_size": INTS + [HUGE], "--threshold": FLOATS})
    args = ["predict", "--ckpt_path", draw(st.sampled_from(CHECKPOINTS[:3]))]
    source = draw(st.sampled_from(["file", "file", "texts", "texts", "none"]))
    if source == "file":
        args += ["--file", draw(st.sampled_from(FILES))]
    elif source == "texts":
        args += draw(st.lists(st.sampled_from(["a great film", "", "not good", "<br />", "\x00", "é" * 50]), min_size=1,
                              max_size=3))
    return args + draw(flags(options, 2)) + draw(switch(switches))


@st.composite
def compare_command(draw) -> list[str]:
    options, switches = argparse_options("compare", {"--out": FOLDERS})
    logdir = draw(st.sampled_from([f"{TMP}/logs", f"{TMP}/empty", f"{IN}/good.csv", "nowhere"]))
    return ["compare", logdir] + draw(flags(options, 1)) + draw(switch(switches))


DATA_FLAGS = {f"--{k}": v for k, v in LIGHTNING.items() if k.startswith("data.")}


@st.composite
def linear_command(draw) -> list[str]:
    options, switches = argparse_options("linear", {
        "--config": [str(QUICKSTART), str(EXPERIMENTS / "lstm.yaml"), f"{IN}/reviews.txt"], "--logdir": [f"{TMP}/logs", *FOLDERS],
        "--combine": [f"{IN}/linear_run", f"{IN}/nowhere", TMP], "--models": ["nbsvm", "tfidf", "nbsvm,tfidf", "svm", ""],
        "--split_seeds": ["0", "0,1", "-1", "x"], "--device": ["auto", "cpu", "bogus"], "--ngrams": ["1", "3", "0", "9"]})
    base = ["--data.source", "synthetic", "--data.synthetic_size", "300", "--data.cache_dir", "{cache}"]
    return ["linear", *base, "--logdir", f"{TMP}/logs"] + draw(flags({**options, **DATA_FLAGS}, 3)) + \
        draw(switch(switches))


SETS = [a for item in SMALL_SETS for a in ("--set", item)]


@st.composite
def sweep_command(draw) -> list[str]:
    # --set takes real option names here: an unknown one (and a space outside a setting's range) is the
    # sweep's own refusal, tested with it
    sets = [a for opt, value in zip(*[iter(draw(flags(LIGHTNING, 2)))] * 2) for a in ("--set", f"{opt[2:]}={value}")]
    return ["sweep", "--encoders", draw(st.sampled_from(["lstm", "nbow", "gru", "nbow,rnn", "transformer", ","])),
            "--seeds", draw(st.sampled_from(["0", "0", "0", "-1", "x"])), "--config", str(QUICKSTART), "--logdir", f"{TMP}/logs",
            *SETS, "--set", "data.cache_dir={cache}", *sets]


@st.composite
def tune_command(draw) -> list[str]:
    sets = [a for opt, value in zip(*[iter(draw(flags(LIGHTNING, 1)))] * 2) for a in ("--set", f"{opt[2:]}={value}")]
    return ["tune", "--config", str(EXPERIMENTS / "tuned" / "nbow.yaml"), "--space", f"{IN}/space.yaml",
            "--trials", draw(st.sampled_from(["1", "1", "1", "0", "x"])), "--logdir", f"{TMP}/logs", *SETS,
            "--set", "data.cache_dir={cache}", *sets]


COMMANDS = {
    "fit": lightning_command("fit"), "validate": lightning_command("validate"), "test": lightning_command("test"),
    "predict": predict_command(), "compare": compare_command(), "linear": linear_command(),
    "sweep": sweep_command(), "tune": tune_command(),
}


# --- one example -------------------------------------------------------------------------------------
# A sweep or tune that refuses a --set value does so inside an Optuna trial: Optuna logs the trial's
# traceback, and the folder the run claimed stays empty. The sweep's own change (made beside this one)
# removes both; until then, for them only, an *empty* folder and Optuna's log of a failed trial are let pass.
SWEEPS = ("sweep", "tune")
OPTUNA_FAILED_TRIAL = "because of the following error"
def run_folders_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("version_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]


def count_reviews(path: str) -> int:
    """Reviews in a file, counted independently of the project's readers."""
    import csv

    if path.endswith(".parquet"):
        return pq.read_metadata(path).num_rows
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    if path.endswith(".csv"):
        return sum(1 for _ in csv.DictReader(text.splitlines(keepends=True)))
    if path.endswith(".jsonl"):
        return sum(1 for line in text.split("\n") if line.strip())
    return len(text.split("\n")) - text.endswith("\n")  # txt: one review a line


def predictions(path: str) -> int:
    if path.endswith(".parquet"):
        return pq.read_metadata(path).num_rows
    return count_reviews(path)


def check_outputs(args: list[str], tmp: Path, out: str) -> None:
    """What an exit 0 promises, by command."""
    command = args[0]
    folders = run_folders_under(tmp / "logs" if command == "compare" else tmp)
    records = {f: json.loads((f / "run.json").read_text()) for f in folders}
    if command in ("fit", "validate", "test", "linear", "sweep", "tune"):
        assert folders, "exit 0 and no run folder"
    if command in ("fit", "sweep"):
        fits = [f for f, r in records.items() if r.get("kind") == "fit"]
        assert fits and all((f / "checkpoints" / "last.ckpt").is_file() for f in fits), fits
        assert all(r["status"] == "finished" for r in records.values()), records
    if command in ("validate", "test"):
        figures = [r.get("val" if command == "validate" else "test") for r in records.values() if r.get("status") == "finished"]
        assert any(figures), records
    if command == "linear":
        assert all((f / "linear.npz").is_file() and records[f]["status"] == "finished" for f in folders), records
    if command == "predict":
        options, switches = argparse_options("predict", {})
        given, texts, i = {}, 0, 1
        while i < len(args):
            if args[i] in options:
                given[args[i]], i = args[i + 1], i + 2
            else:
                texts, i = texts + (args[i] not in switches), i + 1
        expected = count_reviews(given["--file"]) if "--file" in given else texts
        if "--output" in given:
            assert predictions(given["--output"]) == expected, given
        else:
            assert len([line for line in out.splitlines() if line.startswith(("positive\t", "negative\t"))]) == expected
    if command == "compare":
        out_dir = Path(args[args.index("--out") + 1]) if "--out" in args else Path(args[1])
        assert (out_dir / "leaderboard.md").is_file() and (out_dir / "leaderboard.csv").is_file()


def run_example(world: dict, args: list[str], capfd):
    tmp = Path(world["root"]) / f"ex{time.monotonic_ns()}"
    tmp.mkdir()
    (tmp / "empty").mkdir()
    if args[0] == "compare":
        shutil.copytree(world["compare_logs"], tmp / "logs")
    args = [a.replace(IN, str(world["inputs"])).replace(TMP, str(tmp)).replace("{cache}", str(world["cache"])) for a in args]
    capfd.readouterr()
    for handler in logging.getLogger("optuna").handlers:  # Optuna's, made under an earlier test's captured stderr
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # (setStream would flush the closed one first)
    with inside(tmp):
        try:
            cli_main(args)
            code = 0
        except SystemExit as stop:
            code = stop.code if stop.code is not None else 0
    out, err = capfd.readouterr()
    shown = f"imdb-lightning {' '.join(args)}\nexit: {code!r}\n{err[-3000:]}"
    output = out + err
    if args[0] in SWEEPS and OPTUNA_FAILED_TRIAL in output:
        output = output.split(OPTUNA_FAILED_TRIAL)[0]  # see SWEEPS
    assert "Traceback" not in output, shown
    if code != 0:
        assert isinstance(code, str), f"a non-zero exit without its one line: {shown}"
        assert "\n" not in code and ERROR.match(code), shown
    assert fingerprint(world["inputs"]) == world["fingerprint"], f"an input file changed: {shown}"
    for folder in run_folders_under(tmp):
        if args[0] in SWEEPS and not any(folder.iterdir()):
            continue  # a refused sweep's empty version_N: see SWEEPS
        record = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
        assert record.get("status") not in (None, "running"), f"{folder} left without a status ({record}): {shown}"
    if code == 0:
        check_outputs(args, tmp, out)
    shutil.rmtree(tmp, ignore_errors=True)
    return code


def fuzz(world, capfd, command: str, examples: int) -> dict:
    """Run the examples; {"examples": n, "exit 0": k, "refused": n - k} (a failing one raises)."""
    tally = {"examples": 0, "exit 0": 0, "refused": 0}

    # (no shrinking: a drawn command is short already, and each try costs a second or two)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(args=COMMANDS[command])
    def check(args):
        code = run_example(world, args, capfd)
        tally["examples"] += 1
        tally["exit 0" if code == 0 else "refused"] += 1

    check()
    return tally


# examples per command in the default suite (about 40 s here) and under -m slow
QUICK = {"fit": 6, "validate": 3, "test": 3, "predict": 8, "compare": 3, "linear": 3, "sweep": 2, "tune": 1}


@pytest.mark.parametrize("command", list(QUICK))
def test_commands_end_in_a_result_or_one_line(world, capfd, command):
    fuzz(world, capfd, command, QUICK[command])


@pytest.mark.slow
@pytest.mark.parametrize("command", list(QUICK))
def test_commands_deeper(world, capfd, command):
    tally = fuzz(world, capfd, command, 15 * QUICK[command])
    with capfd.disabled():  # what ran, for the record
        print(f"\n{command}: {tally}")


def test_the_grammar_is_read_from_the_code():
    # a new option of the data module, the model, or a command's parser is fuzzed without touching this file
    assert {"data.vocab_size", "data.val_fraction", "model.dropout", "model.encoder.init_args.hidden_size",
            "trainer.max_epochs"} <= set(LIGHTNING)
    assert "data.hub_name" not in LIGHTNING and "hub" not in LIGHTNING["data.source"]
    options, switches = argparse_options("predict", {})
    assert {"--file", "--output", "--threshold", "--batch_size"} <= set(options) and "--with_text" in switches
    assert {"--models", "--ngrams", "--C"} <= set(argparse_options("linear", {})[0])
