import json

from imdb_lightning.cli import cli_main
from imdb_lightning.data.synthetic import NEGATIVE, POSITIVE
from imdb_lightning_lab.memory import memory_reviews


def test_cue_sits_exactly_d_tokens_before_the_end():
    texts, labels = memory_reviews(40, distance=7)
    for text, label in zip(texts, labels):
        words = text.split()
        cues = [i for i, w in enumerate(words) if w in POSITIVE + NEGATIVE]
        assert len(cues) == 1 and len(words) - 1 - cues[0] == 7
        assert (words[cues[0]] in POSITIVE) == (label == 1)


def test_memory_command_writes_results_and_plot(tmp_path):
    cli_main(["memory", "--encoders", "rnn,lstm", "--distances", "2,6", "--seeds", "0", "--size", "120",
              "--epochs", "1", "--hidden_size", "8", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "memory.json").read_text())
    assert set(results["accuracy"]) == {"rnn", "lstm"}
    for by_distance in results["accuracy"].values():
        assert set(by_distance) == {"2", "6"} and all(0 <= a <= 1 for accs in by_distance.values() for a in accs)
    assert (tmp_path / "memory.png").stat().st_size > 5000
    assert "| rnn |" in (tmp_path / "memory.md").read_text()
