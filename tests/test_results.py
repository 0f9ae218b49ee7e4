"""The published figures come from one file: the README's and the docs' tables equal what docs/results.json
gives, the trust figures are computed from it, `results --add` enters a run from its record, and the
manual carries no process words."""

import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from imdb_lightning.cli import cli_main
from imdb_lightning.runs import write_val_reviews
from imdb_lightning.tools import results_figures as F
from imdb_lightning.tools.results import load, stale
from imdb_lightning.tools.results_render import from_scratch

DATA = load(ROOT / "docs" / "results.json")
MANUAL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROCESS_WORDS = [r"\bthe issue\b", r"\bissue's\b", r"field notes", r"\blent\b", r"\bthe lease\b", r"stopped for CI",
                 r"this session", r"\bthe goals?\b"]


def test_the_readme_and_docs_tables_are_what_the_results_file_gives():
    assert stale(ROOT, DATA) == [], "run: imdb-lightning results --render"
    readme = (ROOT / "README.md").read_text()
    assert "<!-- results:readme-results -->" in readme


@pytest.mark.parametrize("page", MANUAL, ids=lambda p: p.name)
def test_the_manual_has_no_process_words(page):
    text = page.read_text()
    found = [m.group(0) for pattern in PROCESS_WORDS for m in re.finditer(pattern, text, re.IGNORECASE)]
    assert not found, f"{page.name}: {found}"


def concordance(entries) -> float:
    """Kendall's tau-a by counting pairs (no ties among these figures): the independent reference for scipy's."""
    score = 0
    for a, b in combinations(entries, 2):
        score += np.sign(a.first["val"] - b.first["val"]) * np.sign(a.first["test"] - b.first["test"])
    n = len(entries)
    return score / (n * (n - 1) / 2)


def test_tau_offsets_and_misranked_pairs_come_from_the_file():
    entries = F.table(DATA)
    assert len(entries) == 16  # every recipe of the table, the concat-pooling LSTM included
    tau, _ = F.kendall(entries)
    assert tau == pytest.approx(concordance(entries))
    wrong = F.misranked(entries)
    assert len(wrong) == pytest.approx((1 - concordance(entries)) / 2 * 120)  # the discordant pairs of 120
    pairs = {(a.key, b.key): (val, test) for a, b, val, test in wrong}
    assert pairs[("lstm_concat", "tfidf")] == (1.16, -0.2)  # 90.04 − 88.88 on validation, 90.56 − 90.76 on test


def test_a_recipe_costs_its_parts_timed_alone_on_one_machine():
    stack = next(e for e in F.table(DATA) if e.key == "stack_lstm_adv")
    cost = F.cost(DATA, stack)
    # language model 19.8 + adversarial fine-tune 8.5 + stack 1.2, each timed alone on the AVX-512 EPYC
    assert cost.machine == "epyc-avx512" and cost.alone and cost.minutes == pytest.approx(29.5)
    assert [p[0] for p in cost.parts] == ["lm_lstm", "lstm_adv", "stack_lstm_adv"]


def test_the_choices_the_manual_names_are_the_files():
    entries = F.table(DATA)
    assert entries[0].key == "stack_lstm_adv"  # docs/pretraining.md: the adversarial LSTM is the chosen stack's half
    assert from_scratch(entries)[0].key == "bigru"  # README's tour
    assert "experiments/tuned/bigru.yaml" in (ROOT / "README.md").read_text().split("## Tour")[1].split("```")[1]


def fake_data(tmp_path):
    data = {"machines": {"a": {"short": "A", "cpu": "cpu A", "cores": 2, "flags": "avx2"},
                         "b": {"short": "B", "cpu": "cpu B", "cores": 2, "flags": "avx2"}},
            "recipes": {"lm": {"label": "LM", "kind": "lm", "command": "pretrain", "table": False},
                        "x": {"label": "X", "kind": "fit", "command": "fit x", "needs": ["lm"], "table": True},
                        "y": {"label": "Y", "kind": "fit", "command": "fit y", "table": True}},
            "runs": [], "levers": []}
    run = dict(seed=0, test=None, timing="alone", date="2026-01-01", commit="abc", record="record not kept")
    data["runs"] += [{**run, "recipe": "lm", "split": None, "val": None, "minutes": 20.0, "machine": "a", "timing": "shared"},
                     {**run, "recipe": "lm", "split": None, "val": None, "minutes": 30.0, "machine": "b"},
                     {**run, "recipe": "x", "split": 0, "val": 90.0, "test": 91.0, "minutes": 5.0, "machine": "a"},
                     {**run, "recipe": "x", "split": 0, "val": 90.5, "test": None, "minutes": 6.0, "machine": "b", "seed": 42}]
    for split, (x, y) in enumerate([(90.0, 89.65), (90.75, 90.0), (90.55, 90.0)]):
        data["runs"].append({**run, "recipe": "y", "split": split, "val": y, "minutes": 1.0, "machine": "a",
                             "test": 90.5 if split == 0 else None})
        if split:
            data["runs"].append({**run, "recipe": "x", "split": split, "val": x, "minutes": 5.0, "machine": "a"})
    return data


def test_costs_prefer_parts_timed_alone_and_verdicts_pair_split_seeds_on_one_machine(tmp_path):
    data = fake_data(tmp_path)
    x = next(e for e in F.table(data) if e.key == "x")
    # on machine a the language model was timed beside other work; on b every part ran alone: 30 + 6
    assert (F.cost(data, x).machine, F.cost(data, x).minutes, F.cost(data, x).alone) == ("b", 36.0, True)
    # x − y on splits 0, 1, 2 of machine a: 0.35, 0.75, 0.55 points. By hand: s² = 0.04, (1/3 + 1/9) × 0.04
    # = 0.017778, se = 0.13333, t(2) = 4.302653: 0.55 ± 0.5737, so not established
    diff, basis = F.verdict(data, "x", "y", tmp_path)
    assert basis == "split seeds" and diff.mean == pytest.approx(0.55) and diff.se == pytest.approx(0.13333, abs=1e-5)
    assert diff.low == pytest.approx(0.55 - 4.302653 * 0.13333, abs=1e-4) and not diff.established


def test_results_add_enters_a_run_from_its_record_and_render_fills_the_blocks(tmp_path, capsys):
    data = fake_data(tmp_path)
    (tmp_path / "docs").mkdir()
    results = tmp_path / "docs" / "results.json"
    results.write_text(json.dumps(data))
    run = tmp_path / "logs" / "y" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 3\ndata:\n  split_seed: 0\n")
    (run / "run.json").write_text(json.dumps({"status": "finished", "seed": 3, "best_val_acc": 0.9015, "wall_s": 93.0,
                                              "validation": {"kind": "grouped", "fraction": 0.1},
                                              "test": {"test/acc": 0.913}}))
    write_val_reviews(run, np.arange(4), np.arange(4), np.ones(4), np.full(4, 0.9), "s", epoch=0)
    cli_main(["results", "--file", str(results), "--add", str(run), "--recipe", "y", "--timing", "shared",
              "--keep", str(tmp_path / "docs" / "records")])
    entry = load(results)["runs"][-1]
    assert (entry["recipe"], entry["seed"], entry["split"], entry["val"], entry["test"], entry["minutes"]) == \
        ("y", 3, 0, 90.15, 91.3, 1.6)
    assert entry["timing"] == "shared" and entry["machine"] not in ("a", "b")  # this machine, entered once
    kept = Path(entry["record"])
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "run.json", "val_reviews.npz"]

    (tmp_path / "README.md").write_text("# x\n\n<!-- results:readme-table -->\nstale\n<!-- /results -->\n")
    with pytest.raises(SystemExit, match="stale generated blocks in README.md"):
        cli_main(["results", "--file", str(results), "--check"])
    cli_main(["results", "--file", str(results), "--render"])
    cli_main(["results", "--file", str(results), "--check"])
    table = (tmp_path / "README.md").read_text()
    assert "| **X** | **90.00** |" in table  # chosen on validation: x (90.00) against y (89.90, seeds 0 and 3)
    assert "| Y | 89.65 (seeds 0, 3: 89.90) | 90.50 (seeds 0, 3: 90.90) |" in table
