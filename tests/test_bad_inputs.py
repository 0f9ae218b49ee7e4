"""Bad input and odd uses through the command line: each ends in one line that names the problem.

Every case runs `imdb-lightning ...` (in-process, as the console script does) and asserts a
non-zero exit, exactly one line of error naming the file / column / row / value / option at
fault, no traceback anywhere in the output, and no partial output file left behind.
"""

import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imdb_lightning
from conftest import EXPERIMENTS, QUICKSTART, TINY_TRAINING
from conftest import write_reviews as write_reviews_file
from imdb_lightning.cli import cli_main
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.errors import UserError
from imdb_lightning.machine import cpu_runs_bf16

FIT = ["fit", "--config", str(QUICKSTART), *TINY_TRAINING, "--data.synthetic_size", "200"]
PRETRAIN = ["pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--trainer.enable_progress_bar", "false"]
SYNTHETIC = ["--data.source", "synthetic", "--data.synthetic_size", "300"]  # for commands that would ask the hub
# the same from an experiment that names no data source: files given on the command line choose it
FILES = ["fit", "--config", str(EXPERIMENTS / "lstm.yaml"), *FIT[3:-2]]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files good and bad, and a sentiment and a forecast checkpoint, in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    texts, labels = synthetic_reviews(200, seed=0)
    films = [f"tt{i // 4:07d}" for i in range(200)]
    pq.write_table(pa.table({"text": texts, "label": labels, "movie": films}), root / "good.parquet")
    pq.write_table(pa.table({"text": texts[:50], "label": labels[:50]}), root / "nofilms.parquet")
    files = {
        "cols.csv": "review,sentiment\ngood,1\n",
        "labels.csv": "text,label\ngood,pos\nbad,meh\n",
        "numbers.csv": "text,label\ngood,1\nbad,7\n",
        "onlypos.csv": "text,label\ngood,1\ngreat,positive\n",
        "notes.txt": "hello",
        "empty.csv": "",
        "bad.jsonl": '{"text": "good", "label": 1}\n{"text": "bad", "label": \n',
        "array.json": "[1, 2, 3]",
        "malformed.yaml": "trainer:\n  max_epochs: [1, 2\n",
        "list.yaml": "- a\n- b\n",
        "missing_base.yaml": "base: nowhere.yaml\n",
        "cycle.yaml": "base: cycle.yaml\n",
        "reviews.txt": "a fine film\nthe plot was not good .\n",
        "nocol.csv": "review\nhello\n",
        "badline.jsonl": '{"text": "fine"}\nnot json\n',
        "notext.jsonl": '{"review": "fine"}\n',
        "empty.yaml": "# only a comment\n",
        "base5.yaml": "base: 5\n",
        "trainer5.yaml": "trainer: 5\n",
        "reviews.csv": "text\na fine film\n",
    }
    for name, content in files.items():
        (root / name).write_text(content)
    (root / "bad.csv").write_bytes(b"text,label\n\xff\xfe broken,1\nok,0\n")
    (root / "twolabels.csv").write_text("text,label,label\ngood,1,1\nbad,0,0\n")
    (root / "brs.csv").write_text("text,label\n" + "".join(f"<br /><br />,{i % 2}\n" for i in range(40)))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 16)  # an image or a zip, named .txt
    (root / "corrupt.parquet").write_bytes(os.urandom(3000))
    (root / "junk.ckpt").write_bytes(os.urandom(3000))
    (root / "folder.csv").mkdir()
    (root / "afile").write_text("not a folder")
    pq.write_table(pa.table({"text": [1, 2], "label": [0, 1]}), root / "inttext.parquet")
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, None]}), root / "nulllabel.parquet")
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, float("nan")]}), root / "nanlabel.parquet")
    pq.write_table(pa.table({"text": pa.array([1, 2, 3])}), root / "ints.parquet")
    few = {"text": [f"good {i}" if i % 2 else f"bad {i}" for i in range(10)], "label": [i % 2 for i in range(10)]}
    pq.write_table(pa.table(few), root / "few.parquet")
    pq.write_table(pa.table({"text": texts, "label": labels, "movie": ["tt1"] * 200}), root / "onefilm.parquet")
    pq.write_table(pa.table({"text": texts, "label": labels, "movie": pa.array([None] * 200, type=pa.string())}),
                   root / "nofilm.parquet")
    pq.write_table(pa.table({"text": ["just one review"]}), root / "onereview.parquet")
    (root / "tabs.csv").write_text("text\tlabel\ngood\t1\nbad\t0\n")
    (root / "badline_fit.jsonl").write_text('{"text": "a", "label": 1}\nnot json\n')

    from imdb_lightning.models.linear import LinearReference

    (root / "linear_run").mkdir()
    linear = LinearReference("nbsvm").fit(["good film", "bad film", "great", "awful"], [1, 0, 1, 0])
    linear.save(root / "linear_run" / "linear.npz")
    # a sentiment and a forecast checkpoint
    cwd = Path.cwd()
    os.chdir(root)
    try:
        cli_main([*FIT, "--data.cache_dir", str(root / "cache")])
        cli_main(["forecast", "fit", "--config", str(EXPERIMENTS / "airline_lstm.yaml"), "--trainer.max_epochs", "1",
                  "--trainer.enable_progress_bar", "false"])
    finally:
        os.chdir(cwd)
    sentiment = next((root / "lightning_logs/quickstart/version_0/checkpoints").glob("best*.ckpt"))
    forecast = next((root / "lightning_logs/airline_lstm/version_0/checkpoints").glob("best*.ckpt"))
    (root / "sentiment.ckpt").write_bytes(sentiment.read_bytes())
    (root / "forecast.ckpt").write_bytes(forecast.read_bytes())
    (root / "truncated.ckpt").write_bytes(sentiment.read_bytes()[:2000])
    return root


D = "{dir}"  # replaced by the inputs folder
CASES = [
    # --- training data ------------------------------------------------------------------------------
    ("missing file", [*FILES, "--data.train_files", "nope.parquet"], r"nope\.parquet: no such file"),
    ("a folder as a file", [*FILES, "--data.train_files", f"{D}/folder.csv"], r"folder\.csv: is a folder"),
    ("empty file", [*FILES, "--data.train_files", f"{D}/empty.csv"], r"empty\.csv: the file is empty"),
    ("wrong columns", [*FILES, "--data.train_files", f"{D}/cols.csv"],
     r"cols\.csv: missing column\(s\) label, text; columns found: review, sentiment"),
    ("label word", [*FILES, "--data.train_files", f"{D}/labels.csv"], r"labels\.csv: label 'meh' in row 1"),
    ("label number", [*FILES, "--data.train_files", f"{D}/numbers.csv"], r"numbers\.csv: label 7 in row 1"),
    ("null label", [*FILES, "--data.train_files", f"{D}/nulllabel.parquet"],
     r"nulllabel\.parquet: row 1 has no label \(empty, null or NaN\)"),
    ("NaN label", [*FILES, "--data.train_files", f"{D}/nanlabel.parquet"], r"nanlabel\.parquet: row 1 has no label"),
    ("one class", [*FILES, "--data.train_files", f"{D}/onlypos.csv"], r"only label 1; it needs both classes"),
    ("unknown type", [*FILES, "--data.train_files", f"{D}/notes.txt"], r"notes\.txt: unknown file type '\.txt'"),
    ("bad bytes", [*FILES, "--data.train_files", f"{D}/bad.csv"], r"bad\.csv: cannot read it as csv"),
    ("corrupt parquet", [*FILES, "--data.train_files", f"{D}/corrupt.parquet"], r"corrupt\.parquet: cannot read it as parquet"),
    ("broken jsonl", [*FILES, "--data.train_files", f"{D}/bad.jsonl"], r"bad\.jsonl: line 2 is not JSON"),
    ("json of numbers", [*FILES, "--data.train_files", f"{D}/array.json"], r"array\.json: cannot read it as json"),
    ("numbers as text", [*FILES, "--data.train_files", f"{D}/inttext.parquet"], r"inttext\.parquet: text in row 0 is int 1"),
    ("missing group column", [*FILES, "--data.train_files", f"{D}/good.parquet", "--data.group_column", "film"],
     r"good\.parquet: missing column\(s\) film"),
    ("grouped without films", [*FILES, "--data.train_files", f"{D}/nofilms.parquet", "--data.val_split", "grouped"],
     r"val_split grouped needs the film of each review"),
    ("empty validation", [*FILES, "--data.train_files", f"{D}/few.parquet", "--data.val_fraction", "0.01"],
     r"val_fraction 0\.01 leaves the validation split empty"),
    ("empty training", [*FILES, "--data.train_files", f"{D}/few.parquet", "--data.val_fraction", "0.95"],
     r"val_fraction 0\.95 leaves the training split empty"),
    ("test without test data", ["test", "--config", str(EXPERIMENTS / "lstm.yaml"), "--data.train_files", f"{D}/good.parquet",
                                "--ckpt_path", f"{D}/sentiment.ckpt"], r"no test data: pass --data\.test_files"),
    ("aclImdb without neg", [*FILES, "--data.aclimdb_dir", f"{D}/folder.csv"], r"train/neg: missing"),
    ("pretrained missing", [*FIT, "--model.pretrained", f"{D}/nowhere.ckpt"], r"nowhere\.ckpt: no such checkpoint file"),
    ("pretrained classifier", [*FIT, "--model.pretrained", f"{D}/sentiment.ckpt"],
     r"sentiment\.ckpt: holds a sentiment classifier .*, not a language model"),
    ("pretrain without text", [*PRETRAIN, "--data.unlabelled_files", f"{D}/cols.csv"], r"cols\.csv: missing column\(s\) text"),
    ("pretrain bptt 0", [*PRETRAIN, "--data.bptt", "0"], r"data\.bptt must be at least 1, got 0"),
    ("pretrain bidirectional", [*PRETRAIN, "--data.unlabelled_files", f"{D}/good.parquet",
                                "--model.encoder.init_args.bidirectional", "true"], r"a language model reads left to right"),
    ("pretrain cutoffs past the vocabulary", [*PRETRAIN, "--data.unlabelled_files", f"{D}/good.parquet",
                                              "--model.adaptive_cutoffs", "[2000, 50000]"],
     r"model\.adaptive_cutoffs must rise strictly between 2 and the vocabulary size \(10000\), got \[2000, 50000\]"),
    # --- options ------------------------------------------------------------------------------------
    ("max_length 0", [*FIT, "--data.max_length", "0"], r"data\.max_length must be at least 1, got 0"),
    ("negative batch", [*FIT, "--data.batch_size", "-1"], r"data\.batch_size must be at least 1, got -1"),
    ("val_fraction 1.5", [*FIT, "--data.val_fraction", "1.5"], r"data\.val_fraction must be between 0 and 1, got 1\.5"),
    ("tiny vocabulary", [*FIT, "--data.vocab_size", "2"], r"data\.vocab_size must leave room"),
    ("negative workers", [*FIT, "--data.num_workers", "-1"], r"data\.num_workers must be 0 or more"),
    ("head dropout below 0", [*FIT, "--model.dropout", "-0.1"], r"model\.dropout must be in \[0, 1\), got -0\.1"),
    ("head dropout 1", [*FIT, "--model.dropout", "1.0"], r"model\.dropout must be in \[0, 1\), got 1\.0"),
    ("unknown cell", [*FIT, "--model.encoder.init_args.cell", "transformer"],
     r"\"cell\": Expected .*'rnn', 'lstm', 'gru'.* Got value: transformer"),
    ("hidden size 0", [*FIT, "--model.encoder.init_args.hidden_size", "0"], r"hidden_size must be at least 1, got 0"),
    ("unknown pooling", [*FIT, "--model.encoder.init_args.pooling", "first"],
     r"\"pooling\": Expected .*'last', 'mean', 'max', 'max_mean', 'last_max_mean'.* Got value: first"),
    ("embedding dropout 1.5", [*FIT, "--model.encoder.init_args.embed_dropout", "1.5"], r"embed_dropout must be in \[0, 1\)"),
    ("negative adversarial", [*FIT, "--model.adversarial", "-1"], r"model\.adversarial must be 0 \(off\) or positive"),
    ("lr_decay below 1", [*FIT, "--model.lr_decay", "0.5"], r"model\.lr_decay .* must be at least 1, got 0\.5"),
    ("unknown monitor", [*FIT, "--model.monitor", "val/accuracy"], r"monitor 'val/accuracy' is never logged.*val/loss"),
    ("early stopping monitor", [*FIT, "--trainer.callbacks.monitor", "val/accurate"],
     r"trainer\.callbacks.*Option 'monitor' is not accepted.*val/accurate"),
    ("epochs not a number", [*FIT, "--trainer.max_epochs", "abc"], r"\"trainer\.max_epochs\".*Expected a <class 'int'>.*abc"),
    ("unknown option", [*FIT, "--data.windoww", "3"], r"unrecognized arguments: --data\.windoww 3"),
    ("files without files", [*FIT, "--data.source", "files"], r"data\.source is 'files' but neither"),
    ("files with synthetic", [*FIT, "--data.train_files", "x.csv"],
     r"train_files/test_files are given but data\.source is 'synthetic'"),
    ("unknown truncation", [*FIT, "--data.truncation", "middle"],
     r"\"data\.truncation\": Expected .*'head', 'tail'.* Got value: middle"),
    ("group column of no files", [*FIT, "--data.group_column", "film"], r"data\.group_column names a column of data files"),
    ("unknown encoder class", [*FIT, "--model.encoder", "nowhere.Encoder"], r"nowhere\.Encoder.*No module named 'nowhere'"),
    ("seed not a number", [*FIT, "--seed_everything", "lots"], r"\"seed_everything\".*Expected a <class 'int'>.*lots"),
    # --- config files -------------------------------------------------------------------------------
    ("missing config", ["fit", "--config", "missing.yaml"], r"missing\.yaml: no such config file"),
    ("malformed YAML", ["fit", "--config", f"{D}/malformed.yaml"], r"malformed\.yaml: not valid YAML \(line 3"),
    ("YAML list", ["fit", "--config", f"{D}/list.yaml"], r"list\.yaml: a config holds keys"),
    ("forecast config to fit", ["fit", "--config", str(EXPERIMENTS / "airline_lstm.yaml")],
     r"airline_lstm\.yaml: data\.\w+ is not an option of IMDBDataModule.*forecast fit"),
    ("sentiment config to forecast", ["forecast", "fit", "--config", str(EXPERIMENTS / "gru.yaml")],
     r"data\.\w+ is not an option of SeriesDataModule.*imdb-lightning fit"),
    ("missing base", ["fit", "--config", f"{D}/missing_base.yaml"], r"nowhere\.yaml: no such config file"),
    ("base cycle", ["fit", "--config", f"{D}/cycle.yaml"], r"cycle\.yaml: its base: files include itself"),
    # --- checkpoints --------------------------------------------------------------------------------
    ("test missing checkpoint", ["test", *FIT[1:], "--ckpt_path", "nope.ckpt"], r"nope\.ckpt: no such checkpoint file"),
    ("test folder checkpoint", ["test", *FIT[1:], "--ckpt_path", D], r"is a directory, not a checkpoint file"),
    ("test random bytes", ["test", *FIT[1:], "--ckpt_path", f"{D}/junk.ckpt"], r"junk\.ckpt: not a readable checkpoint"),
    ("test truncated", ["test", *FIT[1:], "--ckpt_path", f"{D}/truncated.ckpt"],
     r"truncated\.ckpt: not a readable checkpoint \(\w+Error: [^)]*\)$"),
    ("test forecast checkpoint", ["test", *FIT[1:], "--ckpt_path", f"{D}/forecast.ckpt"],
     r"forecast\.ckpt: holds a forecaster.*imdb-lightning test"),
    ("forecast test sentiment checkpoint",
     ["forecast", "test", "--config", str(EXPERIMENTS / "airline_lstm.yaml"), "--ckpt_path", f"{D}/sentiment.ckpt"],
     r"sentiment\.ckpt: holds a sentiment classifier"),
    ("resume without runs", [*FIT, "--ckpt_path", "last", "--trainer.logger.init_args.save_dir", f"{D}/nologs"],
     r"--ckpt_path last: no last checkpoint under"),
    ("fit from random bytes", [*FIT, "--ckpt_path", f"{D}/junk.ckpt"], r"junk\.ckpt: not a readable checkpoint"),
    # --- predict ------------------------------------------------------------------------------------
    ("predict nothing", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt"], r"pass reviews as arguments or with --file"),
    ("predict both", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/reviews.txt", "x"],
     r"pass reviews as arguments or with --file"),
    ("predict no checkpoint", ["predict", "a review"], r"give --ckpt_path, or --config"),
    ("predict a folder", ["predict", "--ckpt_path", D, "a review"], r"is a folder: give a checkpoint file, or a run folder"),
    ("predict missing file", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", "nope.txt"], r"nope\.txt: no such file"),
    ("predict file type", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/afile"],
     r"afile: unknown file type ''"),
    ("predict no text column", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/nocol.csv"],
     r"nocol\.csv: no 'text' column; columns found: review"),
    ("predict numbers", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/ints.parquet"],
     r"ints\.parquet: text in row 0 is int 1, not a string"),
    ("predict numbers to a file", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/ints.parquet",
                                   "--output", f"{D}/out/numbers.parquet"], r"ints\.parquet: text in row 0 is int 1"),
    ("predict bad jsonl", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/badline.jsonl",
                           "--output", f"{D}/out/bad.csv"], r"badline\.jsonl: line 2 is not JSON"),
    ("predict jsonl without text", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/notext.jsonl"],
     r"notext\.jsonl: line 1 has no 'text' field"),
    ("predict corrupt parquet", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/corrupt.parquet"],
     r"corrupt\.parquet: cannot read it as parquet"),
    ("predict output type", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--output", f"{D}/out/o.xlsx"],
     r"o\.xlsx: cannot write '\.xlsx'"),
    ("predict output under a file", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--output", f"{D}/afile/o.csv"],
     r"afile/o\.csv: cannot write there \(\S+afile is a file, not a folder\)"),
    ("predict output unwritable", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--output", "/proc/o.csv"],
     r"/proc/o\.csv: cannot write there"),
    ("predict output a folder", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--output", f"{D}/folder.csv"],
     r"folder\.csv: is a folder"),
    ("predict batch 0", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--batch_size", "0"],
     r"--batch_size must be at least 1"),
    ("predict threshold 2", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--threshold", "2"],
     r"--threshold is a probability"),
    ("predict batch not a number", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--batch_size", "many"],
     r"--batch_size.*many"),
    ("predict malformed config", ["predict", "--config", f"{D}/malformed.yaml", "x"], r"malformed\.yaml: not valid YAML"),
    ("predict config without runs", ["predict", "--config", str(QUICKSTART), "--config", f"{D}/nologs.yaml", "x"],
     r"no checkpoint found under"),
    ("predict random bytes", ["predict", "--ckpt_path", f"{D}/junk.ckpt", "x", "--output", f"{D}/out/junk.csv"],
     r"junk\.ckpt: not a readable checkpoint"),
    ("predict forecast checkpoint", ["predict", "--ckpt_path", f"{D}/forecast.ckpt", "x"], r"forecast\.ckpt: holds a forecaster"),
    ("predict on a missing GPU", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--device", "cuda"],
     r"device 'cuda': no CUDA GPU is available here"),
    ("predict on a banana", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--device", "banana"],
     r"device 'banana' is not a torch device"),
    ("predict with_text to the screen", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "x", "--with_text"],
     r"--with_text goes with --output"),
    # --- export -------------------------------------------------------------------------------------
    ("export to a file", ["export", "--ckpt_path", f"{D}/sentiment.ckpt", "--out", f"{D}/afile"], r"afile: is a file"),
    ("export format", ["export", "--ckpt_path", f"{D}/sentiment.ckpt", "--out", f"{D}/out/e", "--format", "pdf"],
     r"--format.*'pdf'"),
    ("export missing checkpoint", ["export", "--ckpt_path", "nope.ckpt", "--out", f"{D}/out/e"],
     r"nope\.ckpt: no such checkpoint"),
    ("export forecast", ["export", "--ckpt_path", f"{D}/forecast.ckpt", "--out", f"{D}/out/e"], r"holds a forecaster"),
    ("export under a file", ["export", "--ckpt_path", f"{D}/sentiment.ckpt", "--out", f"{D}/afile/e"], r"cannot write there"),
    # --- tools --------------------------------------------------------------------------------------
    ("sweep unknown encoder", ["sweep", "--encoders", "transformer", "--config", str(QUICKSTART)],
     r"unknown encoder\(s\) transformer"),
    ("sweep seeds", ["sweep", "--seeds", "a,b"], r"--seeds.*'a,b'"),
    ("sweep set", ["sweep", "--encoders", "gru", "--config", str(QUICKSTART), "--set", "max_epochs"],
     r"--set 'max_epochs': write KEY=VALUE"),
    ("sweep missing config", ["sweep", "--encoders", "gru", "--config", "nope.yaml"], r"nope\.yaml: no such config file"),
    ("sweep split twice", ["sweep", "--encoders", "gru", "--config", str(QUICKSTART), "--split_seeds", "0,1",
                           "--set", "data.split_seed=2"], r"--split_seeds and --set data\.split_seed"),
    ("compare missing folder", ["compare", "nowhere"], r"nowhere: no such log folder"),
    ("compare empty folder", ["compare", f"{D}/folder.csv"], r"no runs found"),
    ("results file a folder", ["results", "--file", f"{D}/folder.csv", "--check"], r"folder\.csv: a folder, not a results file"),
    ("bench encoder", ["bench", "--encoders", "nbow"], r"unknown encoder\(s\) nbow"),
    ("memory size", ["memory", "--size", "0"], r"--size must be at least 1"),
    ("linear model", ["linear", "--models", "svm"], r"--models: unknown svm"),
    ("linear C", ["linear", "--C", "-1"], r"--C must be positive"),
    ("linear split twice", ["linear", "--split_seeds", "0,1", "--data.split_seed", "2"],
     r"--split_seeds names the splits itself; leave out --data\.split_seed"),
    ("linear option", ["linear", "--trainer.max_epochs", "3"], r"unrecognized arguments: --trainer\.max_epochs"),
    ("linear bad data", ["linear", "--data.train_files", f"{D}/cols.csv"], r"cols\.csv: missing column\(s\) label, text"),
    ("forecast report seeds", ["forecast", "report", "--seeds", "x"], r"--seeds.*'x'"),
    ("unknown command", ["trian"], r"unknown command 'trian'"),
    # --- found by a new-user probe ---------------------------------------------------------------------
    ("empty yaml", ["fit", "--config", f"{D}/empty.yaml"], r"empty\.yaml: holds no settings \(empty, or comments only\)"),
    ("base not a file name", ["fit", "--config", f"{D}/base5.yaml"], r"base5\.yaml: base: holds 5; it names the YAML file"),
    ("trainer not a mapping", ["fit", "--config", f"{D}/trainer5.yaml"],
     r"trainer5\.yaml: trainer: holds 5; it must be a mapping"),
    ("predict output is the input", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/reviews.csv",
                                     "--output", f"{D}/reviews.csv"], r"--output .*reviews\.csv is the --file being read"),
    ("predict best without config", ["predict", "--ckpt_path", "best", "x"], r"--ckpt_path best names a checkpoint of an "
                                                                            r"experiment's newest run: give its --config too"),
    ("export a linear run", ["export", "--ckpt_path", f"{D}/linear_run", "--out", f"{D}/out/x"],
     r"a run folder of `imdb-lightning linear`"),
    ("bench zero steps", ["bench", "--steps", "0"], r"--steps must be at least 1, got 0"),
    ("one film", [*FILES, "--data.train_files", f"{D}/onefilm.parquet"], r"the film column 'movie' names one film only \(tt1\)"
                                                                        r".*--data\.val_split random"),
    ("empty film column", [*FILES, "--data.train_files", f"{D}/nofilm.parquet"], r"the film column 'movie' is empty"),
    ("tab-separated csv", [*FILES, "--data.train_files", f"{D}/tabs.csv"], r"the columns look separated by tabs"),
    ("jsonl bad line for fit", [*FILES, "--data.train_files", f"{D}/badline_fit.jsonl"],
     r"badline_fit\.jsonl: line 2 is not JSON"),
    ("a folder as train_files", [*FILES, "--data.train_files", D], r"is a folder; --data\.train_files / test_files name files"),
    ("pretrain one review", [*PRETRAIN, "--data.unlabelled_files", f"{D}/onereview.parquet"],
     r"the corpus has 1 review\(s\): a language model needs at least two"),
    ("forecast without subcommand", ["forecast"], r"needs a subcommand: fit, validate, test, report"),
    ("combine another task's run", ["linear", "--combine", f"{D}/lightning_logs/airline_lstm/version_0"],
     r"holds a forecaster.*imdb-lightning linear --combine needs the latter"),
    ("negative seed", [*FIT, "--seed_everything", "-1"], r"--seed_everything: a seed is between 0 and 4294967295, got -1"),
    ("huge seed", [*FIT, "--seed_everything", "99999999999"], r"--seed_everything: a seed is between 0 and 4294967295"),
    ("negative split seed", [*FIT, "--data.split_seed", "-3"], r"--data\.split_seed: a seed is between 0 and"),
    ("sweep negative seeds", ["sweep", "--encoders", "lstm", "--seeds", "-1,2", "--config", str(QUICKSTART)],
     r"--seeds: a seed is between 0 and 4294967295, got -1"),
    ("bench zero rounds", ["bench", "--rounds", "0"], r"--rounds must be at least 1, got 0"),
    ("validate a missing checkpoint", ["validate", "--config", str(QUICKSTART), "--ckpt_path", "missing.ckpt"],
     r"missing\.ckpt: no such checkpoint file"),
    ("tune without a space", ["tune", "--config", str(QUICKSTART), "--trials", "1"],
     r"the following arguments are required: --space"),
    # --- round 3 of a fresh probe ----------------------------------------------------------------------
    ("two label columns", [*FILES, "--data.train_files", f"{D}/twolabels.csv"],
     r"twolabels\.csv: 2 columns are named 'label'; keep one"),
    ("negative learning rate", [*FIT, "--model.optimizer.init_args.lr", "-1"], r"model\.optimizer: Invalid learning rate: -1"),
    ("negative weight decay", [*FIT, "--model.optimizer.init_args.weight_decay", "-0.5"],
     r"model\.optimizer: Invalid weight_decay value: -0\.5"),
    ("cache under /proc", [*FIT, "--data.cache_dir", "/proc/cache"],
     r"data\.cache_dir /proc/cache: cannot make that folder \(No such file or directory\)"),
    ("cache is a file", [*FIT, "--data.cache_dir", f"{D}/afile"], r"data\.cache_dir .*afile: cannot make that folder"),
    ("zero epochs", [*FIT, "--trainer.max_epochs", "0"],
     r"--trainer\.max_epochs 0: nothing would be trained and no checkpoint written; give 1 or more"),
    ("zero training batches", [*FIT, "--trainer.limit_train_batches", "0"],
     r"--trainer\.limit_train_batches 0: nothing would be trained.*a fraction above 0 or a count"),
    ("zero steps", [*FIT, "--trainer.max_steps", "0"], r"--trainer\.max_steps 0: nothing would be trained"),
    ("zero validation batches", [*FIT, "--trainer.limit_val_batches", "0"],
     r"--trainer\.limit_val_batches 0: nothing would be validated, and val/\w+ is watched"),
    ("validation every 3rd epoch under a plateau schedule", [*FIT, "--trainer.check_val_every_n_epoch", "3"],
     r"--trainer\.check_val_every_n_epoch 3: the learning-rate schedule steps every epoch on val/loss"),
    ("validation every 0 batches", [*FIT, "--trainer.val_check_interval", "0"],
     r"--trainer\.val_check_interval 0: validate every 1 or more training batches"),
    ("linear negative split seed", ["linear", *SYNTHETIC, "--split_seeds", "-1"],
     r"--split_seeds: a seed is between 0 and 4294967295, got -1"),
    ("validation every 0 epochs", [*FIT, "--trainer.check_val_every_n_epoch", "0"],
     r"--trainer\.check_val_every_n_epoch 0: validate every 1 or more epochs"),
    ("zero test batches", ["test", *FIT[1:], "--ckpt_path", f"{D}/sentiment.ckpt", "--trainer.limit_test_batches", "0"],
     r"--trainer\.limit_test_batches 0: nothing would be tested; give a fraction above 0 or a count"),
    ("linear C infinite", ["linear", *SYNTHETIC, "--C", "inf"], r"--C must be positive \(or 0 for the default\), got inf"),
    ("no such accelerator", [*FIT, "--trainer.accelerator", "tpu"],
     r"--trainer\.accelerator tpu: no TPU is available here; leave the option out \(or --trainer\.accelerator cpu\)"),
    ("unknown accelerator", [*FIT, "--trainer.accelerator", "abacus"], r"--trainer\.accelerator abacus: no such accelerator"),
    ("negative min_frequency", [*FIT, "--data.min_frequency", "-1"], r"data\.min_frequency must be 0 or more, got -1"),
    ("reviews empty once cleaned", [*FILES, "--data.train_files", f"{D}/brs.csv", "--data.val_split", "random"],
     r"all 36 training reviews are empty once HTML line breaks \(<br />\) are dropped: there is nothing to learn from"),
    ("linear on reviews empty once cleaned", ["linear", "--data.train_files", f"{D}/brs.csv", "--data.val_split", "random"],
     r"all 36 training reviews are empty once HTML line breaks"),
    ("runs under a file", [*FIT, "--trainer.default_root_dir", f"{D}/afile"],
     r"--trainer\.default_root_dir .*afile/lightning_logs: cannot write there \(Not a directory\)"),
    ("linear logdir under /proc", ["linear", *SYNTHETIC, "--logdir", "/proc/nowhere"],
     r"--logdir /proc/nowhere: cannot write there"),
    ("binary file as text", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/binary.txt"],
     r"binary\.txt: not UTF-8 text \(50% of the characters in its first 4,096 bytes are NUL or not UTF-8: binary data"),
    ("binary file as text, to a file", ["predict", "--ckpt_path", f"{D}/sentiment.ckpt", "--file", f"{D}/binary.txt",
                                        "--output", f"{D}/out/binary.csv"], r"binary\.txt: not UTF-8 text"),
]


@pytest.mark.parametrize("name, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(inputs, tmp_path, monkeypatch, capsys, name, args, expected):
    monkeypatch.chdir(tmp_path)
    (inputs / "nologs.yaml").write_text(f"trainer: {{logger: {{init_args: {{save_dir: {inputs / 'nologs'}}}}}}}\n")
    args = [a.replace(D, str(inputs)) for a in args]
    if args[0] in ("fit", "test", "validate") and "--data.cache_dir" not in args:
        args += ["--data.cache_dir", str(inputs / "cache")]
    before = set((inputs / "out").rglob("*")) if (inputs / "out").exists() else set()
    with pytest.raises(SystemExit) as exit:
        cli_main(args)
    out, err = capsys.readouterr()
    message = exit.value.code
    assert isinstance(message, str), f"exit status {message!r}, not an error message; stderr: {err[-2000:]}"
    assert "\n" not in message and message.startswith("imdb-lightning"), message
    assert re.search(expected, message), message
    assert "Traceback" not in out + err, err[-3000:]
    # nothing half-written: no output file, no temporary file, no run folder for a fit that never started
    after = set((inputs / "out").rglob("*")) if (inputs / "out").exists() else set()
    assert after == before, after - before
    assert not list(tmp_path.glob("lightning_logs/*/version_*/events*")), "a run folder was left behind"


def test_the_table_names_each_case_once_and_covers_every_command():
    from imdb_lightning.cli import COMMANDS

    assert len({name for name, _, _ in CASES}) == len(CASES)
    assert set(COMMANDS) - {args[0] for _, args, _ in CASES} == set()


def test_a_null_review_is_an_empty_one_everywhere(inputs, tmp_path, capsys):
    """Training reads a null text as an empty review; predict does the same, to the screen and to files."""
    pq.write_table(pa.table({"text": pa.array(["a fine film", None], type=pa.string())}), tmp_path / "nulls.parquet")
    cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "--file", str(tmp_path / "nulls.parquet")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    empty = [line for line in lines if line.split("\t")[2] == ""]
    cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), ""])
    alone = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2 and len(empty) == 1 and empty[0].split("\t")[1] == alone[0].split("\t")[1]
    cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "--file", str(tmp_path / "nulls.parquet"),
              "--output", str(tmp_path / "out.jsonl"), "--with_text"])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[1]["text"] == "" and rows[1]["probability"] == pytest.approx(float(alone[0].split("\t")[1]), abs=1e-4)


BF16 = ["--trainer.precision", "bf16-mixed"]


@pytest.mark.parametrize("command", ["fit", "pretrain", "sweep"])
def test_bf16_on_a_cpu_without_it_is_one_line_before_any_run_folder(inputs, tmp_path, monkeypatch, command):
    # oneDNN's bf16 needs AVX-512: on an AVX2-only CPU an LSTM fails deep inside torch; here the check says so first
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("imdb_lightning.checks.cpu_runs_bf16", lambda: False)
    cache = str(inputs / "cache")
    args = {"fit": [*FIT, "--data.cache_dir", cache, *BF16],
            "pretrain": [*PRETRAIN, "--data.unlabelled_files", str(inputs / "good.parquet"), "--data.cache_dir", cache, *BF16],
            "sweep": ["sweep", "--encoders", "lstm", "--seeds", "0", "--config", str(QUICKSTART), "--logdir", "logs",
                      "--set", "trainer.precision=bf16-mixed", "--set", f"data.cache_dir={cache}"]}[command]
    with pytest.raises(SystemExit) as exit:
        cli_main(args)
    assert re.fullmatch(r"imdb-lightning: error: --trainer\.precision bf16-mixed: this CPU has no bf16 .*"
                        r"use --trainer\.precision 32-true here, or a GPU", exit.value.code), exit.value.code
    assert not list(tmp_path.rglob("events*")) and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.skipif(not cpu_runs_bf16(), reason="this CPU has no bf16")
def test_bf16_trains_on_a_cpu_that_has_it(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main([*FIT, "--data.cache_dir", str(inputs / "cache"), *BF16])
    run = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and 0 <= record["best_val_acc"] <= 1
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_byte_order_mark_is_not_part_of_the_first_review(inputs, tmp_path, capsys):
    for name, content in {"r.txt": "great .\n", "r.csv": "text\ngreat .\n", "r.jsonl": '{"text": "great ."}\n'}.items():
        (tmp_path / name).write_bytes("\ufeff".encode() + content.encode())
        cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "--file", str(tmp_path / name)])
        with_bom = capsys.readouterr().out.split("\t")
        cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "great ."])
        plain = capsys.readouterr().out.split("\t")
        assert with_bom[1] == plain[1] and with_bom[2].strip() == "great .", name


def test_predict_says_when_it_replaces_an_output_file(inputs, tmp_path, capsys):
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "a film", "--output", str(out)])
    assert "(replacing the file that was there)" in capsys.readouterr().err and out.read_text().startswith("id,")


# --- round 3: what needs more than one line of the table -------------------------------------------------
def run_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("version_*") if p.is_dir())


def test_a_vocabulary_too_large_for_the_memory_is_refused_before_it_is_built(inputs, tmp_path, monkeypatch):
    # 100 million words x 32 dimensions: 3.2e9 parameters, 48 GiB to train; a machine with 24 GiB free is told
    # so at once, rather than killed for memory half a minute later with its run left "running"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("imdb_lightning.checks.available_memory", lambda: 24 * 2**30)
    with pytest.raises(SystemExit) as exit:
        cli_main([*FIT, "--data.cache_dir", str(inputs / "cache"), "--data.vocab_size", "100000000"])
    message = exit.value.code
    assert re.fullmatch(r"imdb-lightning: error: model\.encoder: 3,200,\d{3},\d{3} parameters need about 47\.\d GiB to train "
                        r"here .*, and this machine has 24\.0 GiB free; most of it is the word embedding, data\.vocab_size "
                        r"100,000,000 x embed_dim 32: .*lower --data\.vocab_size", message), message
    assert not run_folders(tmp_path)
    # what fits is not refused: the same with room for it trains
    monkeypatch.setattr("imdb_lightning.checks.available_memory", lambda: 2**60)
    with pytest.raises(SystemExit, match="a stand-in for the fit"):
        monkeypatch.setattr("imdb_lightning.training.ExperimentCLI.fit",
                            lambda self, *_, **__: sys.exit("a stand-in for the fit"))  # (built, not trained: 13 GB of weights)
        cli_main([*FIT, "--data.cache_dir", str(inputs / "cache"), "--data.vocab_size", "1000000"])


def test_the_size_check_draws_no_random_numbers():
    # it builds the encoder (on the meta device) after LightningCLI set the seed: a run's weights must not change
    import torch

    from imdb_lightning.checks import check_model_fits
    from imdb_lightning.training import read_config

    model = read_config([str(QUICKSTART)]).model
    torch.manual_seed(0)
    check_model_fits(model, on_cpu=True)
    after_check = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_check, torch.rand(3))


def test_out_of_memory_in_a_fit_is_one_line_and_recorded(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def exhausted(self, batch, batch_idx):
        raise MemoryError

    monkeypatch.setattr("imdb_lightning.models.classifier.SentimentClassifier.training_step", exhausted)
    with pytest.raises(SystemExit) as exit:
        cli_main([*FIT, "--data.cache_dir", str(inputs / "cache")])
    assert re.fullmatch(r"imdb-lightning: error: out of memory during fit; use less data, .*", exit.value.code)
    [run] = run_folders(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "crashed" and record["error"].startswith("MemoryError")


def test_a_run_stopped_before_it_began_still_says_how_it_ended(inputs, tmp_path, monkeypatch):
    # an exception after Lightning made the run folder, before the record began (here: the optimizer's wiring)
    monkeypatch.chdir(tmp_path)

    def broken(self):
        raise RuntimeError("wiring")

    monkeypatch.setattr("imdb_lightning.models.classifier.SentimentClassifier.configure_optimizers", broken)
    with pytest.raises(RuntimeError, match="wiring"):
        cli_main([*FIT, "--data.cache_dir", str(inputs / "cache")])
    [run] = run_folders(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record == {"kind": "fit", "status": "crashed", "error": "RuntimeError: wiring"}


def test_a_csv_and_a_jsonl_of_the_same_films_read_the_same(tmp_path):
    # a jsonl whose film column holds numbers and strings (as exports of mixed ids do) reads as the csv does
    from imdb_lightning.data.sources import FileSource

    labels, spelled = ["neg", 1, True, 0.0], ["neg", "1", "true", "0"]  # as json holds them, as a csv writes them
    rows = [{"text": f"review {i}", "label": labels[i % 4], "movie": i // 3 if i % 2 else f"tt{i // 3}"} for i in range(12)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.json").write_text(json.dumps(rows))
    (tmp_path / "m.csv").write_text("text,label,movie\n" + "".join(f"{r['text']},{spelled[i % 4]},{r['movie']}\n"
                                                                   for i, r in enumerate(rows)))
    read = {name: FileSource([str(tmp_path / name)], []).load("train") for name in ("m.jsonl", "m.json", "m.csv")}
    expected_films = [str(r["movie"]) for r in rows]
    for name, reviews in read.items():
        assert reviews.texts == [r["text"] for r in rows], name
        assert reviews.labels.tolist() == [0, 1, 1, 0] * 3, name
        assert reviews.groups.tolist() == expected_films, name
    # a number where the text belongs is still named by its row
    (tmp_path / "t.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": 7, "label": 0}\n')
    with pytest.raises(UserError, match=r"t\.jsonl: text in row 1 is int 7, not a string"):
        FileSource([str(tmp_path / "t.jsonl")], []).load("train")


def test_a_mixed_jsonl_trains_by_film(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts, labels = synthetic_reviews(200, seed=0)
    (tmp_path / "mixed.jsonl").write_text("".join(
        json.dumps({"text": t, "label": y, "movie": i // 4 if i % 3 else f"{i // 4}"}) + "\n"
        for i, (t, y) in enumerate(zip(texts, labels))))
    cli_main([*FILES, "--data.train_files", str(tmp_path / "mixed.jsonl"), "--data.cache_dir", str(inputs / "cache")])
    [run] = run_folders(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["validation"]["kind"] == "grouped" and record["validation"]["films"] == 5


def test_compare_leaves_a_nan_accuracy_out_of_the_means(inputs, tmp_path, capsys):
    run = inputs / "lightning_logs" / "quickstart" / "version_0"
    for name, acc, seed in (("version_0", 0.75, 1), ("version_1", float("nan"), 2), ("version_2", 0.25, 3)):
        folder = tmp_path / "logs" / "quickstart" / name
        shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints"))
        record = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**record, "best_val_acc": acc, "seed": seed}))
    cli_main(["compare", str(tmp_path / "logs")])
    rows = list(csv.DictReader((tmp_path / "logs" / "leaderboard.csv").open()))
    assert len(rows) == 1 and float(rows[0]["val acc mean"]) == pytest.approx(0.5)
    assert float(rows[0]["val acc std"]) == pytest.approx(statistics.stdev([0.75, 0.25]))


def test_some_wordless_training_reviews_are_a_warning(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    texts, labels = synthetic_reviews(200, seed=0)
    texts = ["<br /><br />" if i % 4 == 0 else t for i, t in enumerate(texts)]
    path = write_reviews_file(tmp_path / "some_empty.parquet", texts, labels)
    cli_main([*FILES, "--data.train_files", path, "--data.cache_dir", str(inputs / "cache")])
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and re.fullmatch(r"imdb-lightning: warning: \d+ of the 180 training reviews hold no words once "
                                              r"HTML line breaks \(<br />\) are dropped \(2\d%\); each reads as one unknown "
                                              r"word", warning[0]), warning
    assert json.loads(next(tmp_path.rglob("run.json")).read_text())["status"] == "finished"


def test_text_with_a_few_bytes_not_utf8_is_classified_with_a_warning(inputs, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("a fine caf\u00e9 film\nthe plot was not good .\n".encode("latin-1"))
    cli_main(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "--file", str(tmp_path / "latin1.txt")])
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2
    expected = r"imdb-lightning: warning: .*latin1\.txt: 1 byte sequence\(s\) in its first 41 bytes are not UTF-8"
    assert re.search(expected, err), err


def test_the_exported_runner_prints_its_usage(capsys):
    # classify.py is serve/runtime.py, copied beside an exported model; --help must not be classified as a review
    from imdb_lightning.serve import runtime

    with pytest.raises(SystemExit) as exit:
        runtime.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: classify.py [-h] [REVIEW ...]") and "standard input" in out


def test_forecast_help_lists_its_subcommands(capsys):
    cli_main(["forecast", "--help"])
    out = capsys.readouterr().out
    assert all(re.search(rf"^  {name}\s+\S", out, re.M) for name in ("fit", "validate", "test", "report")), out


def test_forecast_report_finds_its_recipe_from_any_folder(tmp_path, monkeypatch):
    from imdb_lightning.training import load_yaml
    from imdb_lightning_lab.forecast import report

    monkeypatch.chdir(tmp_path)  # outside the project: no experiments/ here
    seen = {}
    monkeypatch.setattr(report, "report", lambda config, seeds, out: seen.update(config=config) or
                        {"seeds": [{"rmse": 1.0}], "lstm_rmse_mean": 1.0, "lstm_rmse_std": 0.0, "seasonal_naive_rmse": 2.0})
    cli_main(["forecast", "report", "--seeds", "0"])
    assert Path(seen["config"]).is_file()
    assert load_yaml(seen["config"]) == load_yaml(str(EXPERIMENTS / "airline_lstm.yaml"))  # the same recipe


def test_validate_uses_the_checkpoints_vocabulary(inputs, tmp_path, monkeypatch):
    # a data.vocab_size other than the checkpoint's sized the embedding apart from its weights: a traceback
    monkeypatch.chdir(tmp_path)
    cli_main(["validate", *FIT[1:], "--data.cache_dir", str(inputs / "cache"), "--data.vocab_size", "77",
              "--ckpt_path", str(inputs / "sentiment.ckpt")])
    record = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert record["status"] == "finished" and 0 <= record["val"]["val/acc"] <= 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_without_one_is_one_line(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli_main([*FIT, "--data.cache_dir", str(inputs / "cache"), "--trainer.accelerator", "gpu"])
    assert exit.value.code == ("imdb-lightning: error: --trainer.accelerator gpu: no GPU is available here; leave the option "
                               "out (or --trainer.accelerator cpu) to run on the CPU")
    assert not run_folders(tmp_path)


# --- Ctrl-C and SIGTERM outside a Lightning run: one line, exit 130 (143), nothing half-written ----------
def interrupt(*_, **__):
    raise KeyboardInterrupt


def stopped(args: list[str]) -> SystemExit:
    """cli_main's exit; a KeyboardInterrupt escaping it (a traceback for the user) fails the test, not the session."""
    try:
        cli_main(args)
    except KeyboardInterrupt as escaped:
        pytest.fail(f"{type(escaped).__name__} escaped cli_main: a traceback")
    except SystemExit as exit:
        return exit
    pytest.fail("cli_main returned")


def test_ctrl_c_while_fit_reads_its_data(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("imdb_lightning.data.datamodule.IMDBDataModule.reviews", interrupt)
    exit = stopped([*FIT, "--data.cache_dir", str(inputs / "cache")])
    out, err = capsys.readouterr()
    assert exit.code == 130
    assert err.strip().splitlines()[-1] == "imdb-lightning: interrupted (Ctrl-C); fit stopped before it finished"
    assert "Traceback" not in out + err and not run_folders(tmp_path)


def test_ctrl_c_in_linear_leaves_no_run_folder(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("imdb_lightning.models.linear.LinearReference.save", interrupt)  # while writing its run folder
    exit = stopped(["linear", "--data.source", "synthetic", "--data.synthetic_size", "300", "--models", "nbsvm",
                    "--logdir", str(tmp_path / "logs"), "--data.cache_dir", str(inputs / "cache")])
    out, err = capsys.readouterr()
    assert exit.code == 130
    assert err.strip().splitlines()[-1] == "imdb-lightning: interrupted (Ctrl-C); linear stopped before it finished"
    assert "Traceback" not in out + err and not run_folders(tmp_path)


def test_sigterm_in_predict_leaves_no_output(inputs, tmp_path, monkeypatch, capsys):
    from imdb_lightning.errors import Stopped

    calls = []

    def stopped_on_the_second_chunk(self, texts, batch_size=64):
        calls.append(len(texts))
        if len(calls) == 2:
            raise Stopped("SIGTERM")
        return [0.5] * len(texts)

    monkeypatch.setattr("imdb_lightning.serve.predict.CHUNK", 2)
    monkeypatch.setattr("imdb_lightning.serve.predictor.Predictor.predict", stopped_on_the_second_chunk)
    (tmp_path / "r.txt").write_text("one\ntwo\nthree\nfour\nfive\n")
    exit = stopped(["predict", "--ckpt_path", str(inputs / "sentiment.ckpt"), "--file", str(tmp_path / "r.txt"),
                    "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert exit.code == 143 and err.strip().splitlines()[-1] == ("imdb-lightning: interrupted (SIGTERM); predict stopped "
                                                                      "before it finished; no output file was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]  # no output, no temporary file


# --- real signals to real processes --------------------------------------------------------------------
PACKAGE_ROOT = str(Path(imdb_lightning.__file__).parents[1])  # the package under test, in the child too
def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_ctrl_c_during_predict_of_a_large_file(inputs, tmp_path):
    (tmp_path / "big.txt").write_text("a fine film that i liked a lot\n" * 400_000)
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    cmd = [sys.executable, "-m", "imdb_lightning", "predict", "--ckpt_path", str(inputs / "sentiment.ckpt"),
           "--file", str(tmp_path / "big.txt"), "--output", str(tmp_path / "p.parquet")]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # once the first predictions are written (the file has 400,000 reviews: 49 chunks)
    wait_for(lambda: any(p.stat().st_size for p in tmp_path.glob(".p.parquet.*.tmp")) or run.poll() is not None)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in out + err, err[-3000:]
    assert err.strip().splitlines()[-1].endswith("imdb-lightning: interrupted (Ctrl-C); predict stopped before it finished; "
                                                 "no output file was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]


def test_sigterm_during_a_fit_stops_it_cleanly_and_records_why(inputs, tmp_path):
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    cmd = [sys.executable, "-m", "imdb_lightning", "fit", "--config", str(QUICKSTART), "--data.synthetic_size", "2000",
           "--trainer.max_epochs", "50", "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(inputs / "cache")]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    record = tmp_path / "lightning_logs" / "quickstart" / "version_0" / "run.json"
    wait_for(lambda: (record.is_file() and json.loads(record.read_text()).get("epochs")) or run.poll() is not None)
    run.send_signal(signal.SIGTERM)
    out = run.communicate(timeout=120)[0]
    assert run.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert re.search(r"Interrupted at step \d+; .*last\.ckpt holds it", out)
    ended = json.loads(record.read_text())
    assert ended["status"] == "interrupted" and re.fullmatch(r"Stopped: SIGTERM at step \d+; last\.ckpt holds it", ended["error"])
    assert (record.parent / "checkpoints" / "last.ckpt").is_file()
