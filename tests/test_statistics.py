"""compare's statistics on small tables worked by hand: means and spreads, which runs count, paired differences."""

import math
from pathlib import Path

import pytest

from imdb_lightning.tools.compare import Run, distinct_seeds, group, mean_std, paired


def run(name, seed, acc, version, split_seed=0, **settings):
    return Run(Path(f"logs/{name}/version_{version}"), name, {"data.split_seed": split_seed, "model.dropout": 0.0, **settings},
               {"status": "finished", "best_val_acc": acc, "seed": seed, "validation": {"kind": "grouped"}})


def test_mean_and_spread_leave_missing_values_out_and_one_value_has_no_spread():
    assert mean_std([0.8, None, 0.84]) == pytest.approx((0.82, 0.02 * 2**0.5))
    mean, spread = mean_std([0.7])
    assert mean == 0.7 and math.isnan(spread)
    assert all(math.isnan(x) for x in mean_std([None]))


def test_paired_differences_on_the_splits_both_rows_ran():
    # splits 0 and 1 shared (diffs -0.02 and +0.01), split 2 only in the best row
    mean, se, ahead, shared = paired({0: 0.80, 1: 0.84}, {0: 0.82, 1: 0.83, 2: 0.99})
    assert mean == pytest.approx(-0.005) and se == pytest.approx(0.015) and (ahead, shared) == (1, 2)
    # a tie is not ahead; one shared split has no standard error
    mean, se, ahead, shared = paired({0: 0.80}, {0: 0.80})
    assert (mean, ahead, shared) == (0.0, 0, 1) and math.isnan(se)
    # split seeds of any kind (an unknown one is None) sort together; none shared: nothing to say
    assert paired({None: 0.8, 3: 0.7}, {None: 0.9, 3: 0.6})[3] == 2
    mean, se, ahead, shared = paired({0: 0.8}, {1: 0.9})
    assert math.isnan(mean) and math.isnan(se) and (ahead, shared) == (0, 0)


def test_a_setting_varies_only_when_runs_of_one_name_differ_in_it():
    runs = [run("gru", 0, 0.8, 0), run("gru", 1, 0.9, 1), run("lstm", 0, 0.7, 0, **{"model.dropout": 0.5})]
    assert group(runs)[0] == []  # dropout differs between names only: it comes with the name
    split = [run("gru", 0, 0.8, 0), run("gru", 0, 0.9, 1, split_seed=1)]
    assert group(split)[0] == ["data.split_seed"] and len(group(split)[1]) == 2  # by default split seeds are apart
    assert group(split, over_splits=True)[0] == [] and len(group(split, over_splits=True)[1]) == 1


def test_of_runs_of_one_seed_the_newest_version_counts():
    newest = run("gru", 0, 0.9, 10)
    assert distinct_seeds([newest, run("gru", 0, 0.8, 2)]) == [newest]  # version 10 is newer than version 2
    assert distinct_seeds([run("gru", 0, 0.8, 2), newest]) == [newest]


def test_the_leaderboard_names_its_columns_by_the_last_part_of_a_varying_setting():
    from imdb_lightning.tools.compare import leaderboard

    runs = [run("gru", 0, 0.8, 0, **{"model.encoder.init_args.hidden_size": 8}),
            run("gru", 0, 0.9, 1, **{"model.encoder.init_args.hidden_size": 16})]
    for r in runs:
        r.record["parameters"] = 123
        r.settings.update({"model.encoder.class_path": "imdb_lightning.models.encoders.RecurrentEncoder",
                           "model.encoder.init_args.cell": "gru"})
    header, rows = leaderboard(runs)
    assert header[:5] == ["model", "encoder", "hidden_size", "val split", "seeds"] and header[5] == "parameters"
    assert [row[:3] for row in rows] == [["gru", "gru", 16], ["gru", "gru", 8]] and rows[0][header.index("parameters")] == 123


def test_every_leaderboard_figure_is_the_mean_over_seeds_of_the_runs_records_and_a_row_without_val_acc_comes_last():
    import statistics

    from imdb_lightning.tools.compare import leaderboard

    runs = [run("gru", 0, 0.80, 0), run("gru", 1, 0.84, 1), run("lstm", 0, None, 0)]
    runs[1].record["validation"] = {"kind": "random"}
    for r, (epochs, speed, se, test) in zip(runs, [(3, 100.0, 0.01, (0.7, 0.6, 0.8)), (5, 300.0, 0.02, (0.9, 0.8, 1.0)),
                                               (1, 50.0, 0.03, (0.5, 0.5, 0.5))]):
        # a test figure is an evaluation of the run's best checkpoint, found by its digest
        r.record.update(epochs=epochs, train_samples_per_s=speed, val_acc_se=se, best_checkpoint={"digest": f"{r.folder}"})
        r.evaluations = [{"stage": "test", "checkpoint": {"digest": f"{r.folder}"}, "sort_time": 0, "owner": r.folder,
                          "data": {"digest": "same reviews", "files": ["test.parquet"]},
                          "figures": {"test/acc": test[0], "test/f1": test[1], "test/auroc": test[2]}}]
    header, rows = leaderboard(runs)
    assert header[-3:] == ["epochs", "wall s", "train samples/s"]
    gru, lstm = rows  # the row with no validation accuracy last
    assert gru[0] == "gru" and lstm[0] == "lstm" and gru[header.index("val split")] == "grouped/random"
    spread = statistics.stdev
    expected = {"val ±95%": (1.96 * 0.015, spread([1.96 * 0.01, 1.96 * 0.02])), "test acc": (0.8, spread([0.7, 0.9])),
                "test f1": (0.7, spread([0.6, 0.8])), "test auroc": (0.9, spread([0.8, 1.0]))}
    for column, (mean, std) in expected.items():
        assert gru[header.index(column)] == pytest.approx((mean, std)), column
    assert gru[header.index("epochs")] == 4 and gru[header.index("train samples/s")] == 200.0
    assert gru[header.index("test data")] == "test.parquet"
