"""TensorBoard's HParams tab: its columns, each run's row (fresh, resumed, tested), and a real server's view of a sweep."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import EXPERIMENTS, QUICKSTART, SMALL, SMALL_SETS, free_port
from imdb_lightning.cli import cli_main
from imdb_lightning.models.encoders import ENCODERS, ScratchRNNEncoder, encoder_spec, named_encoder
from imdb_lightning.models.hparams import HPARAMS, METRICS, NAMES, SESSION_FILE, encoder_name
from imdb_lightning.tools.compare import compare, find_runs

# the columns in the order a reader wants them, and the metrics after them
COLUMNS = ["encoder", "bidirectional", "hidden size", "embedding size", "layers", "pooling", "dropout", "adversarial",
           "learning rate", "batch size", "max epochs", "vocabulary", "seed", "val split", "split seed", "pretrained"]
METRIC_TAGS = ["hp/val_acc", "hp/val_acc_se", "hp/test_acc", "hp/wall_s"]
CATEGORIES = {"encoder", "bidirectional", "pooling", "val split", "pretrained"}


def events(path: Path) -> list:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return list(LegacyEventFileLoader(str(path)).Load())


def hparams_data(folder: Path, tag: str) -> list:
    """Every `tag` summary of the hparams plugin in a run folder's event files, parsed."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = []
    for file in sorted(folder.glob("*tfevents*")):
        for event in events(file):
            for value in event.summary.value:
                if value.tag == tag:
                    found.append(plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content))
    return found


def last_scalar(folder: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator.Scalars(tag)[-1].value


def test_the_columns_are_declared_in_reading_order_with_the_metrics_after_them():
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    summary = hp.hparams_config_pb(HPARAMS, METRICS)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content).experiment
    # TensorBoard's server sorts the columns by name and its table shows the first five: names sort in reading order
    infos = sorted(experiment.hparam_infos, key=lambda info: info.name)
    assert [info.display_name for info in infos] == COLUMNS
    assert [m.name.tag for m in experiment.metric_infos] == METRIC_TAGS
    for info in infos:
        if info.display_name in CATEGORIES:  # categories as text with a checkbox per value, never as 0.0000
            assert info.type == api_pb2.DATA_TYPE_STRING and len(info.domain_discrete.values) >= 2
        else:
            assert info.type == api_pb2.DATA_TYPE_FLOAT64
    encoders = {v.string_value for v in next(i for i in infos if i.display_name == "encoder").domain_discrete.values}
    assert encoders == {*ENCODERS, "scratch_rnn", "tfidf", "nbsvm"}  # the last two: the linear references' rows
    assert not any("class_path" in info.name or "instantiator" in info.name for info in infos)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_an_encoder_is_named_as_the_registry_names_it(name):
    assert encoder_name(encoder_spec(named_encoder(name, vocab_size=50))) == name


def test_encoders_outside_the_registry_presets_are_named_by_cell_or_class():
    assert encoder_name(encoder_spec(ScratchRNNEncoder(vocab_size=50))) == "scratch_rnn"
    # tuned/rnn.yaml's SimpleRNN reads both ways: still rnn, as its sweep folder says (bidirectional: true)
    assert encoder_name(encoder_spec(named_encoder("rnn", vocab_size=50, bidirectional=True))) == "rnn"
    # a checkpoint from before the package had folders; an encoder class of the user's own
    assert encoder_name({"class_path": "imdb_lightning.encoders.RecurrentEncoder", "init_args": {"cell": "gru"}}) == "gru"
    assert encoder_name({"class_path": "mine.encoders.ConvEncoder", "init_args": {}}) == "ConvEncoder"


def row(folder: Path) -> dict:
    """The run's HParams row: display name -> value, from its one session start."""
    (start,) = hparams_data(folder, "_hparams_/session_start_info")
    values = start.session_start_info.hparams
    label = {name: display for display, name in NAMES.items()}
    return {label[k]: v.string_value or v.number_value for k, v in values.items()}


def test_a_fit_resumed_and_tested_keeps_one_row_with_the_settings_it_ran_with(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--config", str(QUICKSTART), *SMALL, "--data.cache_dir", cache_dir, "--seed_everything", "7",
             "--data.batch_size", "16", "--data.split_seed", "3", "--model.optimizer.init_args.lr", "0.002",
             "--model.adversarial", "0.05"]
    cli_main(["fit", *flags])
    run = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    # the values the run was given, each from the flag or file that set it
    assert row(run) == {"encoder": "lstm", "bidirectional": "false", "hidden size": 32, "embedding size": 32, "layers": 1,
                        "pooling": "max", "dropout": 0.0, "adversarial": 0.05, "learning rate": 0.002, "batch size": 16,
                        "max epochs": 1, "vocabulary": 300, "seed": 7, "val split": "random", "split seed": 3,
                        "pretrained": "no"}
    assert "tensorboard --logdir" in capsys.readouterr().err
    saved = yaml.safe_load((run / "hparams.yaml").read_text())  # the model's and data's arguments, as Lightning writes them
    assert saved["batch_size"] == 16 and saved["adversarial"] == 0.05 and saved["split_seed"] == 3

    cli_main(["fit", *flags, "--trainer.max_epochs", "2", "--ckpt_path", "last"])  # resumed in its own folder
    assert row(run)["max epochs"] == 2  # (one session start in the folder: the one it goes on with)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 2
    assert last_scalar(run, "hp/val_acc") == pytest.approx(record["best_val_acc"], abs=1e-7)
    assert last_scalar(run, "hp/wall_s") == pytest.approx(record["wall_s"], rel=1e-6)
    (end,) = hparams_data(run, "_hparams_/session_end_info")
    assert end.session_end_info.status == 1  # STATUS_SUCCESS
    # hp/val_acc_se: the film-clustered error of the epoch the best checkpoint is from
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    accs = [e.value for e in accumulator.Scalars("val/acc")]
    best_epoch = accs.index(max(accs))
    assert last_scalar(run, "hp/val_acc_se") == accumulator.Scalars("val/acc_se")[best_epoch].value

    best = next((run / "checkpoints").glob("best*.ckpt"))
    cli_main(["test", *flags, "--trainer.limit_test_batches", "1", "--ckpt_path", str(best)])
    tested = tmp_path / "lightning_logs" / "quickstart" / "version_1"
    test_acc = json.loads((tested / "run.json").read_text())["test"]["test/acc"]
    assert not (tested / SESSION_FILE).exists()  # no second row for the test: its figure joins the fit's
    assert last_scalar(run, "hp/test_acc") == pytest.approx(test_acc, abs=1e-7)
    result = compare(tmp_path / "lightning_logs", tmp_path / "out")
    (fit_row,) = result["rows"]
    assert fit_row[result["header"].index("encoder")] == "lstm"
    assert fit_row[result["header"].index("test acc")][0] == pytest.approx(test_acc)


def test_the_linear_references_have_rows_with_compares_figures(tmp_path, cache_dir):
    from imdb_lightning.tools.linear import main as linear

    linear(["--config", str(QUICKSTART), "--data.synthetic_size", "300", "--data.cache_dir", cache_dir,
            "--logdir", str(tmp_path)])
    runs = {run.encoder: run for run in find_runs(tmp_path)}
    assert set(runs) == {"nbsvm", "tfidf"}  # compare's encoder column: the model
    for name, run in runs.items():
        assert row(run.folder) == {"encoder": name, "val split": "random", "split seed": 0, "pretrained": "no"}
        assert last_scalar(run.folder, "hp/val_acc") == pytest.approx(run.record["best_val_acc"], abs=1e-7)
        assert 1.96 * last_scalar(run.folder, "hp/val_acc_se") == pytest.approx(run.val_interval(), rel=1e-6)
        assert last_scalar(run.folder, "hp/test_acc") == pytest.approx(run.test_figures()["test/acc"], abs=1e-7)
        assert last_scalar(run.folder, "hp/wall_s") == pytest.approx(run.cost_s(), rel=1e-6)
        (end,) = hparams_data(run.folder, "_hparams_/session_end_info")
        assert end.session_end_info.status == 1  # STATUS_SUCCESS: a finished run, as compare counts it


def test_the_summary_names_the_dashboard_of_the_logger_used(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", str(QUICKSTART), *SMALL, "--data.cache_dir", cache_dir,
              "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", "logs"])
    err = capsys.readouterr().err
    metrics = Path("logs") / "quickstart" / "version_0" / "metrics.csv"
    assert f"metrics per step and epoch: {metrics}" in err and metrics.is_file()
    assert "tensorboard" not in err


def test_no_logger_no_dashboard():
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from imdb_lightning.summary import dashboard

    run = Path("logs/gru/version_3")
    assert dashboard(TensorBoardLogger("logs", name="gru"), run) == ["  tensorboard --logdir logs"]
    assert dashboard(CSVLogger("logs", name="gru"), run) == [f"  metrics per step and epoch: {run / 'metrics.csv'}"]
    assert dashboard(None, None) == []


# --- a real TensorBoard server --------------------------------------------------------------------------------------
def post(port: int, route: str, request: dict) -> dict:
    call = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/{route}", data=json.dumps(request).encode(),
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=30) as response:
        return json.loads(response.read())


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.mark.slow
def test_a_tensorboard_server_shows_a_sweep_as_compare_does(tmp_path):
    logdir, cache = tmp_path / "logs", tmp_path / "cache"
    sets = [a for s in [*SMALL_SETS, f"data.cache_dir={cache}"] for a in ("--set", s)]
    sweep = [sys.executable, "-m", "imdb_lightning", "sweep", "--encoders", "lstm,gru", "--seeds", "0,1",
             "--config", str(EXPERIMENTS / "lstm.yaml"), "--logdir", str(logdir), *sets]
    subprocess.run(sweep, check=True, capture_output=True, timeout=600)
    # one run resumed for a second epoch, and one tested again on part of the test split: still four rows
    resumed, retested = logdir / "gru" / "version_0", logdir / "lstm" / "version_1"
    flags = ["--config", str(EXPERIMENTS / "lstm.yaml"), *SMALL, "--data.cache_dir", str(cache),
             "--trainer.logger.init_args.save_dir", str(logdir)]
    subprocess.run([sys.executable, "-m", "imdb_lightning", "fit", *flags, "--model.encoder.init_args.cell", "gru",
                    "--trainer.logger.init_args.name", "gru", "--trainer.logger.init_args.version", "0",
                    "--seed_everything", str(json.loads((resumed / "run.json").read_text())["seed"]), "--trainer.max_epochs", "2",
                    "--ckpt_path", str(resumed / "checkpoints" / "last.ckpt")], check=True, capture_output=True, timeout=300)
    best = next((retested / "checkpoints").glob("best*.ckpt"))
    subprocess.run([sys.executable, "-m", "imdb_lightning", "test", *flags, "--trainer.logger.init_args.name", "lstm",
                    "--trainer.limit_test_batches", "1", "--ckpt_path", str(best)],
                   check=True, capture_output=True, timeout=300)
    compared = {run.folder.relative_to(logdir).as_posix(): run for run in find_runs(logdir)}
    assert len(compared) == 4

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        request = {"allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 100}
        groups, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:  # the server loads the logs in the background
            try:
                groups = post(port, "session_groups", request)["sessionGroups"]
            except OSError:
                groups = []
            if len(groups) == 4 and all(len(g["metricValues"]) == len(METRIC_TAGS) for g in groups):
                break
            time.sleep(1)
        experiment = post(port, "experiment", {})
    finally:
        server.terminate()
        server.wait(timeout=30)

    # the columns as the HParams table lists them, and the metrics after them
    assert [info["displayName"] for info in experiment["hparamInfos"]] == COLUMNS
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == METRIC_TAGS
    assert sorted(g["name"] for g in groups) == sorted(compared)  # a row per run compare reads, no other
    encoder = NAMES["encoder"]
    for group in groups:
        run = compared[group["name"]]
        (session,) = group["sessions"]
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert group["hparams"][encoder] == run.encoder == run.folder.parent.name  # lstm / gru, as compare names it
        assert session["status"] == "STATUS_SUCCESS" and run.finished
        assert metrics["hp/val_acc"] == pytest.approx(run.record["best_val_acc"], abs=1e-7)
        assert metrics["hp/test_acc"] == pytest.approx(run.test_figures()["test/acc"], abs=1e-7)
        assert metrics["hp/wall_s"] == pytest.approx(run.cost_s(), rel=1e-6)
        assert 1.96 * metrics["hp/val_acc_se"] == pytest.approx(run.val_interval(), rel=1e-6)
        assert group["hparams"][NAMES["max epochs"]] == (2 if run.folder == resumed else 1)
    test_runs = [json.loads(p.read_text()) for p in logdir.glob("lstm/version_*/run.json")]
    (test_run,) = [r for r in test_runs if r["kind"] == "test"]
    assert compared["lstm/version_1"].test_figures()["test/acc"] == test_run["test"]["test/acc"]
    table = compare(logdir, tmp_path / "out")
    # (the gru run resumed for a second epoch is a row of its own there: its max_epochs differs)
    assert sorted(row[table["header"].index("encoder")] for row in table["rows"]) == ["gru", "gru", "lstm"]
