"""Sweeps, the leaderboard and plots, and what TensorBoard is given to show."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import EXPERIMENTS, QUICKSTART, TINY_TRAINING
from imdb_lightning.cli import cli_main
from imdb_lightning.models.encoders import ENCODERS
from imdb_lightning.models.hparams import NAMES
from imdb_lightning.tools.compare import Run, compare, find_runs, group, leaderboard, mean_std
from imdb_lightning.tools.sweep import sweep_key

SWEEP_SETS = ["data.synthetic_size=400", "data.max_length=60", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
         "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    args = ["sweep", "--encoders", "rnn,gru", "--seeds", "0,1", "--config", str(QUICKSTART),
            "--logdir", str(root / "logs"), *[a for s in SWEEP_SETS for a in ("--set", s)],
            "--set", f"data.cache_dir={root / 'cache'}"]
    cli_main(args)
    return root, args


def test_sweep_runs_tests_and_records_every_run(swept):
    root, _ = swept
    records = [json.loads(p.read_text()) for p in sorted((root / "logs").glob("*/version_*/run.json"))]
    assert sorted((r["encoder"], r["seed"]) for r in records) == [("gru", 0), ("gru", 1), ("rnn", 0), ("rnn", 1)]
    for record in records:
        assert record["status"] == "finished" and record["epochs"] == 2 and record["kind"] == "fit"
        assert 0 <= record["best_val_acc"] <= 1 and record["train_samples_per_s"] > 0
        assert set(record["test"]) >= {"test/acc", "test/f1", "test/auroc", "test/loss", "test/acc_se"}
        assert record["validation"]["kind"] == "random"  # synthetic reviews have no films


def test_rerun_skips_finished_and_resumes_unfinished(swept, capsys):
    root, args = swept
    record_file = next((root / "logs" / "gru").glob("version_*/run.json"))
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "status": "running"}))  # as if killed
    runs_before = sorted((root / "logs").glob("*/version_*"))
    cli_main(args)
    err = capsys.readouterr().err
    assert err.count("skipped") == 3 and "resuming" in err
    assert sorted((root / "logs").glob("*/version_*")) == runs_before  # resumed in its own folder
    assert json.loads(record_file.read_text())["status"] == "finished"


def test_sweep_over_split_seeds_records_each_split_and_compare_pools_them(tmp_path, capsys):
    args = ["sweep", "--encoders", "gru", "--seeds", "0", "--split_seeds", "0,2", "--config", str(QUICKSTART),
            "--logdir", str(tmp_path / "logs"), *[a for s in SWEEP_SETS for a in ("--set", s)],
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    cli_main(args)
    runs = sorted((tmp_path / "logs" / "gru").glob("version_*"))
    records = [json.loads((r / "run.json").read_text()) for r in runs]
    configs = [yaml.safe_load((r / "config.yaml").read_text()) for r in runs]
    assert sorted((r["split_seed"], c["data"]["split_seed"]) for r, c in zip(records, configs)) == [(0, 0), (2, 2)]
    assert all(r["status"] == "finished" and r["seed"] == 0 for r in records)
    # runs of several split seeds: the command it suggests pools them
    assert f"[sweep] done; compare with: imdb-lightning compare {tmp_path / 'logs'} --over_splits\n" in capsys.readouterr().err
    header, rows = leaderboard(find_runs(tmp_path / "logs"), over_splits=True)
    assert len(rows) == 1 and rows[0][header.index("splits")] == 2
    cli_main(args)  # a rerun finds both runs by their keys, split seed included
    assert capsys.readouterr().err.count("skipped") == 2


def test_compare_writes_leaderboard_and_plots(swept, tmp_path):
    root, _ = swept
    crashed = root / "logs" / "gru" / "version_9"
    crashed.mkdir()
    (crashed / "config.yaml").write_text((next((root / "logs" / "gru").glob("version_0")) / "config.yaml").read_text())
    (crashed / "run.json").write_text(json.dumps({"status": "crashed", "error": "RuntimeError: boom"}))
    result = compare(root / "logs", tmp_path)
    assert result["runs"] == 5 and result["finished"] == 4
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| rnn | rnn |" in table and "| gru | gru |" in table and "crashed (RuntimeError: boom)" in table
    assert "grouped: whole films held out" in table  # every accuracy says which split it is on
    rows = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 3
    assert rows[0].startswith("model,encoder,val split,seeds,parameters,val acc mean,val acc std,val ±95% mean")
    assert all(",random,2," in row for row in rows[1:])  # two seeds per encoder, random validation
    for png in ("val_acc.png", "val_loss.png", "acc_vs_time.png"):
        assert (tmp_path / png).stat().st_size > 5000


def test_tensorboard_gets_the_metrics_the_readme_names(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    root, _ = swept
    runs = [p.parent for p in sorted((root / "logs").glob("*/version_*/run.json"))
            if json.loads(p.read_text())["status"] == "finished"]
    assert len(runs) == 4
    for run in runs:
        events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"val/acc", "val/loss", "val/acc_se", "train/loss", "train/loss_epoch", "hp/val_acc", "test/acc"} <= scalars
        assert any(t.startswith("lr-") for t in scalars)
        assert len(events.Scalars("val/acc")) == 2 and all(0 <= e.value <= 1 for e in events.Scalars("val/acc"))
        # hp/val_acc is only ever a real accuracy, never a placeholder 0 at step 0
        assert all(e.value > 0 for e in events.Scalars("hp/val_acc"))
        assert {"test/confusion_matrix", "test/roc"} <= set(events.Tags()["images"])
        # the HPARAMS tab: the settings, the validation kind, the hp/ figures as columns (tests/test_hparams_tab.py)
        plugin = events.PluginTagToContent("hparams")
        experiment = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
        assert [m.name.tag for m in experiment.metric_infos] == ["hp/val_acc", "hp/val_acc_se", "hp/test_acc", "hp/wall_s"]
        session = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
        assert session.hparams[NAMES["val split"]].string_value == "random"
        assert session.hparams[NAMES["encoder"]].string_value == run.parent.name


def fake(name, seed, acc, folder=None, **settings):
    return Run(Path(folder or f"{name}/version_{seed}"), name, {"model.dropout": 0.0, **settings},
               {"status": "finished", "best_val_acc": acc, "epochs": 3, "wall_s": 10.0, "parameters": 5, "seed": seed,
                "validation": {"kind": "grouped"}})


def test_grouping_mean_std_and_order():
    runs = [fake("lstm", 0, 0.80), fake("lstm", 1, 0.84), fake("gru", 0, 0.90),
            fake("lstm", 0, 0.70, folder="lstm/version_7", **{"model.dropout": 0.5})]
    varying, groups = group(runs)
    assert varying == ["model.dropout"] and len(groups) == 3
    header, rows = leaderboard(runs)
    assert [r[0] for r in rows] == ["gru", "lstm", "lstm"]  # best first
    lstm = rows[1]
    assert lstm[header.index("seeds")] == 2 and lstm[header.index("val split")] == "grouped"
    assert lstm[header.index("val acc")] == pytest.approx((0.82, mean_std([0.80, 0.84])[1]))
    assert mean_std([0.80, 0.84])[1] == pytest.approx(0.028284, abs=1e-6)


def test_a_seed_run_twice_counts_once():
    runs = [fake("gru", 42, 0.80, folder="gru/version_0"), fake("gru", 42, 0.80, folder="gru/version_1"),
            fake("gru", 1, 0.90, folder="gru/version_2")]
    header, rows = leaderboard(runs)
    assert rows[0][header.index("seeds")] == 2
    assert rows[0][header.index("val acc")][0] == pytest.approx(0.85)


def test_test_and_validate_runs_join_their_fit(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ["--config", str(QUICKSTART), "--data.cache_dir", cache_dir, *TINY_TRAINING, "--data.synthetic_size", "300"]
    cli_main(["fit", *small])
    best = next(Path("lightning_logs/quickstart/version_0/checkpoints").glob("best*.ckpt"))
    cli_main(["test", *small, "--ckpt_path", str(best)])
    cli_main(["validate", *small, "--ckpt_path", "best"])
    records = {p.parent.name: json.loads(p.read_text()) for p in Path("lightning_logs/quickstart").glob("*/run.json")}
    assert [records[f"version_{i}"]["kind"] for i in range(3)] == ["fit", "test", "validate"]
    # checkpoints are named relative to the record's own run folder, with their digest
    assert {records[f"version_{i}"]["checkpoint"] for i in (1, 2)} == {f"../version_0/checkpoints/{best.name}"}
    digest = "sha256:" + hashlib.sha256(best.read_bytes()).hexdigest()
    assert {e["checkpoint"]["digest"] for i in (1, 2) for e in records[f"version_{i}"]["evaluations"]} == {digest}
    result = compare("lightning_logs", tmp_path / "out")
    assert result["runs"] == 1 and result["finished"] == 1  # one fit, nothing listed as unfinished
    row = result["rows"][0]
    assert row[result["header"].index("test acc")][0] == pytest.approx(records["version_1"]["test"]["test/acc"])
    assert "not counted" not in (tmp_path / "out" / "leaderboard.md").read_text()


def test_sweep_runs_the_bag_of_words_reference_from_a_per_encoder_config(tmp_path):
    (tmp_path / "cfg").mkdir()
    # the encoder's own recipe: its encoder stands (the quickstart's LSTM swapped for the NBoW, as tuned/nbow.yaml)
    (tmp_path / "cfg" / "nbow.yaml").write_text(QUICKSTART.read_text().replace(
        "RecurrentEncoder\n    init_args:\n      cell: lstm\n", "NBoWEncoder\n    init_args:\n").replace(
        "      hidden_size: 32\n", ""))
    template = str(tmp_path / "cfg" / "{encoder}.yaml")
    args = ["sweep", "--encoders", "nbow", "--seeds", "0", "--config", template, "--logdir", str(tmp_path / "logs"),
            *[a for s in SWEEP_SETS for a in ("--set", s)], "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    cli_main(args)
    run = next((tmp_path / "logs" / "nbow").glob("version_*"))
    assert "class_path: imdb_lightning.models.encoders.NBoWEncoder" in (run / "config.yaml").read_text()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("encoder", ["rnn", "lstm", "gru", "bilstm", "bigru"])
def test_an_encoders_own_recipe_keeps_its_encoder_and_a_shared_config_gets_the_registry_preset(encoder):
    from imdb_lightning.tools.sweep import encoder_configs
    from imdb_lightning.training import read_config

    def encoder_settings(configs):
        files, preset = encoder_configs([encoder], configs)[encoder]
        init = read_config(files, preset).model.encoder.init_args
        return init.cell, init.bidirectional

    recipe = yaml.safe_load((EXPERIMENTS / "tuned" / f"{encoder}.yaml").read_text())["model"]["encoder"]["init_args"]
    # tuned/rnn.yaml reads both ways, where the registry's "rnn" reads one: the recipe is what runs
    assert encoder_settings([str(EXPERIMENTS / "tuned" / "{encoder}.yaml")]) == (recipe["cell"], recipe["bidirectional"])
    preset = ENCODERS[encoder][1]
    assert encoder_settings([str(QUICKSTART)]) == (preset["cell"], preset["bidirectional"])


def test_runs_of_an_own_recipe_made_with_the_preset_laid_over_it_are_not_reused():
    recipe = [str(EXPERIMENTS / "tuned" / "rnn.yaml")]
    assert sweep_key("rnn", 0, recipe, [], own_recipe=True) != sweep_key("rnn", 0, recipe, [])


def test_a_sweep_key_reads_every_tuned_recipe_and_changes_with_their_shared_base(tmp_path):
    tuned = sorted((EXPERIMENTS / "tuned").glob("*.yaml"))
    keys = {path.stem: sweep_key(path.stem, 0, [str(path)], []) for path in tuned if path.stem != "recipe"}
    assert len(set(keys.values())) == len(keys) >= 6  # (rnn.yaml's own keys once made a too-long file name)
    for path in tuned:
        (tmp_path / path.name).write_text(path.read_text())
    before = sweep_key("rnn", 0, [str(tmp_path / "rnn.yaml")], [])
    assert before == keys["rnn"]
    (tmp_path / "recipe.yaml").write_text((tmp_path / "recipe.yaml").read_text().replace("max_epochs: 3", "max_epochs: 4"))
    assert sweep_key("rnn", 0, [str(tmp_path / "rnn.yaml")], []) != before


def write_run(root, folder, seed, split_seed, acc):
    run = root / folder
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed_everything: {seed}\ndata:\n  split_seed: {split_seed}\nmodel:\n  dropout: 0.5\n")
    (run / "run.json").write_text(json.dumps({"status": "finished", "best_val_acc": acc, "seed": seed, "epochs": 2,
                                              "validation": {"kind": "grouped"}, "wall_s": 1.0}))


def test_over_splits_pools_split_seeds_and_pairs_differences(tmp_path, capsys):
    logs = tmp_path / "logs"
    # gru on splits 0-2 (two model seeds on split 0: one sample of that split); rnn on splits 0-2; nbow on split 1 only
    for i, (name, seed, split, acc) in enumerate([
            ("gru", 0, 0, 0.88), ("gru", 1, 0, 0.90), ("gru", 0, 1, 0.91), ("gru", 0, 2, 0.90),
            ("rnn", 0, 0, 0.87), ("rnn", 0, 1, 0.90), ("rnn", 0, 2, 0.91), ("nbow", 0, 1, 0.80)]):
        write_run(logs, f"{name}/version_{i}", seed, split, acc)

    header, rows = leaderboard(find_runs(logs))  # by default each split is its own row
    assert "split_seed" in header and len(rows) == 7

    cli_main(["compare", str(logs), "--over_splits"])
    assert "ahead on" in capsys.readouterr().out
    header, rows = leaderboard(find_runs(logs), over_splits=True)
    col = {h: i for i, h in enumerate(header)}
    assert "split_seed" not in header and [r[0] for r in rows] == ["gru", "rnn", "nbow"]
    gru, rnn, nbow = rows
    assert gru[col["splits"]] == 3 and gru[col["seeds"]] == 2
    assert gru[col["val acc"]] == pytest.approx(mean_std([0.89, 0.91, 0.90]))  # split 0: mean of its two seeds
    assert gru[col["val acc − best"]][:2] == (0.0, 0.0)
    diffs = [0.87 - 0.89, 0.90 - 0.91, 0.91 - 0.90]  # paired, split by split
    mean, se, ahead, shared = rnn[col["val acc − best"]]
    assert mean == pytest.approx(sum(diffs) / 3) and se == pytest.approx(mean_std(diffs)[1] / 3 ** 0.5)
    assert (ahead, shared) == (1, 3)
    assert nbow[col["val acc − best"]][0] == pytest.approx(-0.11) and nbow[col["val acc − best"]][3] == 1

    csv_rows = (logs / "leaderboard.csv").read_text().splitlines()
    assert len({len(r.split(",")) for r in csv_rows}) == 1  # the paired column's four parts have four headers
    assert "val acc − best se" in csv_rows[0]
    assert "Over splits: each split seed is one sample" in (logs / "leaderboard.md").read_text()


def test_a_stack_costs_its_partners_too_and_one_seed_shows_no_spread():
    from imdb_lightning.tools.compare import fmt

    stack = fake("nbsvm_3gram+gru", 0, 0.91)
    stack.record.update(kind="linear", wall_s=109.0, total_wall_s=1033.0, checkpoints=["gru/version_0/checkpoints/best.ckpt"])
    stack.record.pop("epochs")
    header, rows = leaderboard([stack, fake("gru", 0, 0.89)])
    by_name = {row[0]: row for row in rows}
    assert by_name["nbsvm_3gram+gru"][header.index("wall s")] == 1033.0  # its own 109 s + the GRU's 924 s
    assert fmt(by_name["gru"][header.index("val acc")], "val acc") == "0.8900"  # one seed: no "± 0.0000"
    assert by_name["nbsvm_3gram+gru"][header.index("epochs")] != by_name["nbsvm_3gram+gru"][header.index("epochs")]  # none


def test_unreadable_run_files_are_skipped_with_a_line(tmp_path, capsys):
    for name, config, record in [("a", "- a list\n", "{}"), ("b", "model: {dropout: 0.1}\n", "[]")]:
        folder = tmp_path / name / "version_0"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(config)
        (folder / "run.json").write_text(record)
    assert find_runs(tmp_path) == []
    out = capsys.readouterr().out
    assert "config.yaml holds a list, not a mapping" in out and "run.json: holds a list, not a run record" in out
