import json
import math

from imdb_lightning.cli import cli_main

KEYS = {
    "train_samples_per_s", "loop_samples_per_s", "ratio_vs_loop", "bucketed_vs_packed", "bucketed_vs_fixed",
    "predict_reviews_per_s", "predict_latency_ms_p50", "predict_latency_ms_p95", "peak_rss_mb",
    "torchscript_predict_reviews_per_s", "onnx_predict_reviews_per_s", "onnx_predict_latency_ms_p95",
}


def test_quick_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cli_main(["bench", "--quick", "--encoders", "lstm,bilstm", "--out", str(out)])
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    for top in ("tokenize_cold_s", "tokenize_warm_s"):
        assert math.isfinite(report[top]) and report[top] > 0
    assert set(report["encoders"]) == {"lstm", "bilstm"}
    for figures in report["encoders"].values():
        assert KEYS <= set(figures)
        for key in KEYS:
            assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
