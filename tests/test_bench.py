import json
import math

import pytest

from imdb_lightning.cli import cli_main
from imdb_lightning.machine import cpu_runs_bf16

KEYS = {
    "train_samples_per_s", "loop_samples_per_s", "ratio_vs_loop", "bucketed_vs_packed", "bucketed_vs_fixed",
    "predict_reviews_per_s", "predict_latency_ms_p50", "predict_latency_ms_p95", "peak_rss_mb",
    "torchscript_predict_reviews_per_s", "onnx_predict_reviews_per_s", "onnx_predict_latency_ms_p95",
    "train_gflops", "predict_gflops", "step_matmul_gflops",
}


def test_quick_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cli_main(["bench", "--quick", "--encoders", "lstm,bilstm", "--out", str(out)])
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    for top in ("tokenize_cold_s", "tokenize_warm_s", "matmul_gflops"):
        assert math.isfinite(report[top]) and report[top] > 0
    assert set(report["encoders"]) == {"lstm", "bilstm"}
    assert_host_bound(report)
    assert report["machine"]["device"] == "cpu" and isinstance(report["machine"]["cpu_flags"], list)
    for figures in report["encoders"].values():
        assert KEYS <= set(figures)
        for key in KEYS:
            assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
        low, high = figures["ratio_iqr"]
        assert len(figures["ratio_rounds"]) == 1 and low <= figures["ratio_vs_loop"] <= high
        by_batch = figures["predict_reviews_per_s_by_batch_size"]
        assert set(by_batch) == {"16", "64", "256"} and all(v > 0 for v in by_batch.values())


@pytest.mark.slow
def test_quick_bench_levers(tmp_path):
    out = tmp_path / "bench.json"
    cli_main(["bench", "--quick", "--encoders", "gru", "--levers", "--out", str(out)])
    levers = json.loads(out.read_text())["encoders"]["gru"]["levers"]
    assert levers["one_thread_vs_default"] > 0 and levers["torch_compile_vs_eager"] > 0
    bf16 = levers["bf16_autocast_vs_fp32"]
    if cpu_runs_bf16():  # oneDNN computes in bf16 on this CPU: a ratio, never an error
        assert isinstance(bf16, float) and bf16 > 0, bf16
    else:  # emulated (a ratio), or refused by oneDNN: then the reason, from torch's own message
        assert (isinstance(bf16, float) and bf16 > 0) or (bf16.startswith("failed: ") and len(bf16) > len("failed: ")), bf16


def test_flop_count_of_a_bidirectional_lstm():
    from imdb_lightning.models.encoders import RecurrentEncoder
    from imdb_lightning_lab.bench import recurrent_flops_per_token

    encoder = RecurrentEncoder(vocab_size=10, cell="lstm", bidirectional=True, embed_dim=128, hidden_size=128, num_layers=2)
    # per direction: 4 gates x 128 outputs x (inputs + 128) multiply-adds; layer 2 reads both directions (256)
    assert recurrent_flops_per_token(encoder) == 2 * 2 * 4 * 128 * (128 + 128) + 2 * 2 * 4 * 128 * (256 + 128)


def test_ratio_spread_over_rounds():
    from imdb_lightning_lab.bench import ratio_figures

    figures = ratio_figures([0.9, 1.0, 1.1, 1.0, 0.95])
    assert figures["ratio_vs_loop"] == 1.0
    low, high = figures["ratio_iqr"]
    assert 0.9 < low < 1.0 < high < 1.1


@pytest.mark.skipif(not cpu_runs_bf16(), reason="this CPU has no bf16 arithmetic for oneDNN")
def test_quick_bench_in_bf16(tmp_path):
    out = tmp_path / "bench.json"
    cli_main(["bench", "--quick", "--encoders", "lstm", "--precision", "bf16-mixed", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["settings"]["precision"] == "bf16-mixed"
    figures = report["encoders"]["lstm"]
    assert all(math.isfinite(figures[key]) and figures[key] > 0 for key in KEYS)


def test_bench_in_bf16_on_a_cpu_without_it_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr("imdb_lightning_lab.bench.cpu_runs_bf16", lambda: False)
    with pytest.raises(SystemExit, match=r"--precision bf16-mixed: this CPU has no bf16 arithmetic"):
        cli_main(["bench", "--quick", "--precision", "bf16-mixed", "--out", str(tmp_path / "b.json")])
    assert not (tmp_path / "b.json").exists()


def assert_host_bound(report: dict) -> None:
    figures = report["host_bound"]
    assert report["host_bound_ratio"] == figures["host_bound_ratio"] > 0
    for name in ("lightning", "bare_lightning", "loop"):
        assert figures[f"{name}_ms_per_step"] > 0 and len(figures[f"{name}_ms_rounds"]) == len(figures["ratio_rounds"])
    low, high = figures["ratio_iqr"]
    assert low <= figures["host_bound_ratio"] <= high and figures["shape"]["hidden_size"] == 8


def test_overhead_bench_reports_only_training_speed(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cli_main(["bench", "--quick", "--overhead", "--encoders", "gru", "--out", str(out)])
    report = json.loads(out.read_text())
    assert_host_bound(report)
    figures = report["encoders"]["gru"]
    assert figures["ratio_vs_loop"] > 0 and figures["train_samples_per_s"] > 0
    assert "predict_reviews_per_s" not in figures and "tokenize_cold_s" not in report
    assert "host-bound (gru 8, 16 words, batch 64" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--steps", "--rounds", "--host_bound_steps", "--host_bound_rounds"])
def test_bench_counts_must_be_positive(option, tmp_path):
    with pytest.raises(SystemExit, match=f"{option} must be at least 1, got 0"):
        cli_main(["bench", "--quick", option, "0", "--out", str(tmp_path / "b.json")])
    assert not (tmp_path / "b.json").exists()
