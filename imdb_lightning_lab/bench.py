"""`imdb-lightning bench`: what training and inference cost here, beside a hand-written loop.

Every speed is measured in this process on the same batches, so ratios compare like with like:
the framework (`SentimentClassifier` through the Lightning `Trainer`) against the minimal PyTorch
loop below, length-bucketed padding against packed sequences and against fixed-length padding.
On a GPU (`--accelerator gpu`) both run on it and the clocks are read after synchronising it.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from imdb_lightning.arguments import ArgumentParser, comma_list
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.sources import FileSource, write_reviews
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.machine import NO_BF16, cpu_flags, cpu_runs_bf16
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RECURRENT, class_path, encoder_spec, named_encoder
from imdb_lightning.serve.export import export_predictor
from imdb_lightning.serve.predictor import Predictor
from imdb_lightning.serve.runtime import ExportedClassifier

SETTINGS = ("embed_dim", "hidden_size", "max_length", "batch_size", "steps", "warmup", "rounds", "precision")
LOG_EVERY_N_STEPS = 20  # as config/defaults.yaml: the steps whose figures the host reads


def recurrent_flops_per_token(encoder: torch.nn.Module) -> int:
    """Multiply-adds x 2 of the recurrent layers for one token in a forward pass (the bulk of the work;
    embedding lookup, pooling and head are comparatively free): every input and recurrent weight, once."""
    rnns = [m for m in encoder.modules() if isinstance(m, torch.nn.RNNBase)]
    return sum(2 * (rnn.weight_ih_l0.numel() + rnn.weight_hh_l0.numel()) for rnn in rnns)


def matmul_gflops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of repeated (m, k) @ (k, n) products: the ceiling this CPU's BLAS reaches for that shape."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading a clock
        torch.cuda.synchronize(device)


class LoopStep:
    """One step of the hand-written baseline: forward, loss, backward, Adam step."""

    def __init__(self, model, bf16: bool = False, device: str = "cpu"):
        self.device, self.bf16 = torch.device(device), bf16
        self.model = model.to(self.device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def __call__(self, batch: dict) -> int:
        # moved as Lightning moves them
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(batch["input_ids"], batch["lengths"]).float()
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return len(batch["labels"])


def reference_loop(model, batches: list[dict], warmup: int, bf16: bool = False, device: str = "cpu") -> float:
    """The hand-written loop over `batches`: samples/s after warm-up."""
    step = LoopStep(model, bf16, device)
    samples = 0
    for i, batch in enumerate(batches):
        if i == warmup:
            synchronize(step.device)
            start = time.perf_counter()
        reviews = step(batch)
        samples += reviews if i >= warmup else 0
    synchronize(step.device)
    return samples / (time.perf_counter() - start)


class _Clock(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.samples, self.start, self.end = warmup, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            synchronize(module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.samples += len(batch["labels"])

    def on_train_epoch_end(self, trainer, module):
        synchronize(module.device)
        self.end = time.perf_counter()


def ratio_figures(ratios: list[float]) -> dict:
    """The framework/loop ratio of each round, its median and spread: a 3% difference is only
    visible when the rounds' interquartile range is narrower than that."""
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"ratio_vs_loop": statistics.median(ratios), "ratio_iqr": [quartiles[0], quartiles[2]],
            "ratio_rounds": ratios}


def timing_trainer(callback: L.Callback, accelerator: str, deterministic: bool, precision: str) -> L.Trainer:
    """A Trainer with the default run's per-step logging and metrics, and nothing else that costs time."""
    return L.Trainer(
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=deterministic, callbacks=[callback],
        accelerator=accelerator, devices=1, precision=precision, log_every_n_steps=LOG_EVERY_N_STEPS,
    )


def lightning_speed(model: L.LightningModule, batches: list[dict], warmup: int, accelerator: str = "cpu",
                    deterministic: bool = True, precision: str = "32-true") -> float:
    """Samples/s of the same batches through the Trainer."""
    clock = _Clock(warmup)
    trainer = timing_trainer(clock, accelerator, deterministic, precision)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return clock.samples / (clock.end - clock.start)


class _PairedLoop(L.Callback):
    """After each Lightning step, one step of the hand-written loop on the same batch, timed alone.
    The two alternate every few milliseconds, so a shift in this machine's speed weighs on both alike;
    Lightning's time is the rest of the epoch's."""

    def __init__(self, step: LoopStep, warmup: int):
        self.step, self.warmup = step, warmup
        self.loop_s, self.steps, self.start, self.end = 0.0, 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        synchronize(self.step.device)  # Lightning's step, device work included, is over
        start = time.perf_counter()
        self.step(batch)
        synchronize(self.step.device)
        end = time.perf_counter()
        if batch_idx == self.warmup - 1:
            self.start = end
        elif batch_idx >= self.warmup:
            self.loop_s += end - start
            self.steps += 1

    def on_train_epoch_end(self, trainer, module):
        synchronize(module.device)
        self.end = time.perf_counter()


def paired_ms(module: L.LightningModule, model: torch.nn.Module, batches: list[dict], warmup: int, args) -> tuple[float, float]:
    """Milliseconds per step of `module` through the Trainer and of the hand loop on a copy of `model`,
    interleaved step by step (warmup >= 1)."""
    paired = _PairedLoop(LoopStep(copy.deepcopy(model), args.precision == "bf16-mixed", args.device), warmup)
    trainer = timing_trainer(paired, args.accelerator, args.deterministic, args.precision)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return 1000 * (paired.end - paired.start - paired.loop_s) / paired.steps, 1000 * paired.loop_s / paired.steps


class BareModule(L.LightningModule):
    """The least a LightningModule can be: the model's loss returned, nothing logged or measured.
    Through the Trainer it shows what Lightning's own loop costs per step."""

    def __init__(self, model: SentimentClassifier):
        super().__init__()
        self.model = model

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["input_ids"], batch["lengths"])
        return F.binary_cross_entropy_with_logits(logits, batch["labels"].float())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


# A model too small to cost anything (GRU 8, 16-word reviews, batch 64): each step's time is then
# almost all host work, the framework's own included, which on a GPU is no longer hidden behind the model's.
HOST_BOUND = {"encoder": "gru", "embed_dim": 8, "hidden_size": 8, "max_length": 16, "batch_size": 64, "vocab_size": 2000}


def host_bound(args) -> dict:
    """Per-step milliseconds of the classifier through Lightning and of a bare LightningModule through
    Lightning, each interleaved step by step with the hand-written loop on the same tiny batches;
    ratios per round, median and spread."""
    shape = HOST_BOUND
    generator = torch.Generator().manual_seed(0)
    batch, length = shape["batch_size"], shape["max_length"]
    steps, warmup, rounds = (20, 2, 1) if args.quick else (args.host_bound_steps, 5, args.host_bound_rounds)
    batches = [{"input_ids": torch.randint(2, shape["vocab_size"], (batch, length), generator=generator),
                "lengths": torch.full((batch,), length), "labels": torch.randint(0, 2, (batch,), generator=generator),
                "groups": torch.arange(batch)} for _ in range(warmup + steps)]
    encoder = named_encoder(shape["encoder"], vocab_size=shape["vocab_size"], embed_dim=shape["embed_dim"],
                            hidden_size=shape["hidden_size"])
    model = SentimentClassifier(encoder, scheduler=None)
    print(f"[host-bound] {shape['encoder']} {shape['hidden_size']}, {length} words, batch {batch}: {rounds} rounds "
          f"of {steps} steps, each step beside one of the hand loop", file=sys.stderr)
    ms = {"lightning": [], "loop": [], "bare_lightning": [], "loop_beside_bare": []}
    for _ in range(rounds):
        for name, module in (("lightning", copy.deepcopy(model)), ("bare_lightning", BareModule(copy.deepcopy(model)))):
            framework, loop = paired_ms(module, model, batches, warmup, args)
            ms[name].append(framework)
            ms["loop" if name == "lightning" else "loop_beside_bare"].append(loop)
    ratios = ratio_figures([loop / framework for loop, framework in zip(ms["loop"], ms["lightning"])])
    bare = ratio_figures([loop / framework for loop, framework in zip(ms["loop_beside_bare"], ms["bare_lightning"])])
    return {
        "shape": {k: v for k, v in shape.items()}, "steps": steps, "log_every_n_steps": LOG_EVERY_N_STEPS, "paired": True,
        **{f"{name}_ms_per_step": statistics.median(values) for name, values in ms.items()},
        **{f"{name}_ms_rounds": values for name, values in ms.items()},
        "host_bound_ratio": ratios["ratio_vs_loop"], "ratio_iqr": ratios["ratio_iqr"], "ratio_rounds": ratios["ratio_rounds"],
        "bare_ratio": bare["ratio_vs_loop"], "bare_ratio_iqr": bare["ratio_iqr"],
    }


def fixed_length(batch: dict, max_length: int) -> dict:
    ids = torch.zeros(len(batch["labels"]), max_length, dtype=torch.long)  # (batch, max_length), as Keras pads
    ids[:, : batch["input_ids"].shape[1]] = batch["input_ids"]
    return {**batch, "input_ids": ids}


def peak_rss_mb(train_file: str, name: str, settings: dict, args, cache_dir: str) -> tuple[float, float]:
    """Peak resident memory (MB) and wall time (s) of a one-epoch `imdb-lightning fit` in a child process."""
    encoder = named_encoder(name, **settings)
    flags = [f"--model.encoder.init_args.{k}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in encoder_spec(encoder)["init_args"].items() if k != "vocab_size"]
    cmd = [
        sys.executable, "-m", "imdb_lightning", "fit", "--model.encoder", class_path(type(encoder)),
        *flags, f"--data.train_files={train_file}", f"--data.cache_dir={cache_dir}",
        f"--data.max_length={args.max_length}", f"--data.batch_size={args.batch_size}",
        "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=null", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.precision={args.precision}",
    ] + (["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"] if args.quick else [])
    start = time.perf_counter()
    peak_kb = 0
    with tempfile.TemporaryDirectory() as cwd, open(Path(cwd) / "out.log", "w+") as log:
        child = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        # VmHWM is the child's own high-water mark. (rusage's maxrss would also count the pages it
        # shared with this large parent when it was forked.)
        while child.poll() is None:
            peak_kb = max(peak_kb, _vm_hwm_kb(child.pid))
            time.sleep(0.2)
        if child.returncode:
            log.seek(0)
            raise RuntimeError(f"the one-epoch run failed:\n{log.read()[-2000:]}")
    return peak_kb / 1024, time.perf_counter() - start


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:  # exited between poll() and the read
        pass
    return 0


def machine(device: str) -> dict:
    out = {"cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": L.__version__, "device": device}
    if device.startswith("cuda"):
        out["gpu"], out["cuda"] = torch.cuda.get_device_name(device), torch.version.cuda
    return out


def run(args) -> dict:
    torch.manual_seed(0)
    if args.quick:
        args.embed_dim = args.hidden_size = 16
        args.max_length, args.steps, args.warmup, args.rounds, args.tokenize_reviews = 64, 2, 1, 1, 600
    if args.train_files:
        reviews = FileSource([args.train_files], []).load("train")
        texts, labels = reviews.texts, reviews.labels.tolist()
        data_name = f"IMDB reviews from {args.train_files}"
    else:
        texts, labels = synthetic_reviews(400 if args.quick else 25000, seed=0, median_words=175)
        data_name = "synthetic reviews with IMDB's length profile"
    report: dict = {
        "date": date.today().isoformat(),
        "machine": machine(args.device),
        "data": data_name,
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "overhead_only": args.overhead,
    }
    report["host_bound"] = host_bound(args)
    report["host_bound_ratio"] = report["host_bound"]["host_bound_ratio"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.overhead:
            report.update(tokenize_figures(texts, labels, tmp, args))
            # the CPU's fp32 peak, near enough
            report["matmul_gflops"] = matmul_gflops(1024, 1024, 1024, 0.2 if args.quick else 2.0)
        train_file = write_reviews(texts, labels, tmp / "train.parquet")
        dm = IMDBDataModule(train_files=train_file, cache_dir=str(tmp / "cache"), max_length=args.max_length,
                            batch_size=args.batch_size)
        batches = list(islice(dm.train_dataloader(), args.warmup + args.steps))
        report["encoders"] = {}
        for name in args.encoders:
            spec = dict(embed_dim=args.embed_dim, hidden_size=args.hidden_size)
            # No LR schedule: the timed runs have no validation, and the reference loop has none either.
            model = SentimentClassifier(named_encoder(name, vocab_size=dm.hparams.vocab_size, **spec), scheduler=None)
            figures = training_figures(name, model, batches, args)
            if not args.overhead:
                figures.update(padding_figures(name, model, batches, spec, dm.hparams.vocab_size, args))
                figures.update(inference_figures(name, model, dm, tmp, args))
                figures.update(work_figures(model, batches, dm, figures, args))
                if args.levers:
                    figures["levers"] = levers(model, batches[: args.warmup + max(1, args.steps // 4)], args)
                print(f"[{name}] one training epoch in a child process (peak memory)", file=sys.stderr)
                figures["peak_rss_mb"], figures["epoch_wall_s"] = peak_rss_mb(train_file, name, spec, args, str(tmp / "cache"))
            report["encoders"][name] = figures
    return report


def tokenize_figures(texts: list[str], labels: list[int], tmp: Path, args) -> dict:
    """Tokenization through the DataModule: cold (empty cache) and warm (second start)."""
    repeats = -(-args.tokenize_reviews // len(texts))
    n = args.tokenize_reviews
    # a seeded shuffle first: files sorted by label (IMDB's are) would give a one-class cut of n reviews
    order = np.random.default_rng(0).permutation(len(texts) * repeats)[:n] % len(texts)
    many = write_reviews([texts[i] for i in order], [labels[i] for i in order], tmp / "many.parquet")
    out = {"tokenize_reviews": n}
    for name in ("tokenize_cold_s", "tokenize_warm_s"):
        start = time.perf_counter()
        dm = IMDBDataModule(train_files=many, cache_dir=str(tmp / "cache"), max_length=args.max_length)
        dm.dataset("train"), dm.dataset("val")
        out[name] = time.perf_counter() - start
    return out


def training_figures(name: str, model: SentimentClassifier, batches: list[dict], args) -> dict:
    print(f"[{name}] training speed on {args.device}: Lightning vs the hand-written loop, {args.rounds} rounds", file=sys.stderr)
    framework, loop = [], []
    bf16 = args.precision == "bf16-mixed"  # the loop then autocasts as Lightning's bf16-mixed does
    for _ in range(args.rounds):  # alternate, so drifts of the machine hit both alike
        framework.append(lightning_speed(copy.deepcopy(model), batches, args.warmup, args.accelerator, args.deterministic,
                                         args.precision))
        loop.append(reference_loop(copy.deepcopy(model), batches, args.warmup, bf16, device=args.device))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_samples_per_s": statistics.median(framework),
        "loop_samples_per_s": statistics.median(loop),
        **ratio_figures([f / r for f, r in zip(framework, loop)]),
    }


def padding_figures(name: str, model: SentimentClassifier, batches: list[dict], spec: dict, vocab_size: int, args) -> dict:
    """Length buckets against packed sequences and against Keras-style fixed-length padding, in the loop."""
    print(f"[{name}] packed and fixed-length batches", file=sys.stderr)
    bf16 = args.precision == "bf16-mixed"
    few = batches[: args.warmup + max(1, args.steps // 4)]  # packed sequences are slow: fewer steps
    packed = SentimentClassifier(named_encoder(name, vocab_size=vocab_size, packed=True, **spec), scheduler=None)
    packed.load_state_dict(model.state_dict())
    bucketed_few = reference_loop(copy.deepcopy(model), few, args.warmup, bf16, device=args.device)
    out = {"packed_samples_per_s": reference_loop(packed, few, args.warmup, bf16, device=args.device)}
    out["bucketed_vs_packed"] = bucketed_few / out["packed_samples_per_s"]
    fixed = [fixed_length(b, args.max_length) for b in few]
    out["fixed_samples_per_s"] = reference_loop(copy.deepcopy(model), fixed, args.warmup, bf16, device=args.device)
    out["bucketed_vs_fixed"] = bucketed_few / out["fixed_samples_per_s"]
    return out


def inference_figures(name: str, model: SentimentClassifier, dm: IMDBDataModule, tmp: Path, args) -> dict:
    """Batched throughput and one-review latency: PyTorch, TorchScript and ONNX Runtime (CPU)."""
    print(f"[{name}] inference: PyTorch (on {args.device}), TorchScript, ONNX Runtime (CPU)", file=sys.stderr)
    predictor = Predictor(copy.deepcopy(model), dm.get_tokenizer(), args.max_length)  # CPU: what export traces
    sample = dm.reviews("val").texts[: 200 if args.quick else 2500]
    engines = {"": predictor}
    for fmt in ("torchscript", "onnx"):
        engines[f"{fmt}_"] = ExportedClassifier(export_predictor(predictor, fmt, tmp / f"{name}-{fmt}"))
    out = {}
    for prefix, engine in engines.items():
        engine.predict(sample[:50])  # warm-up
        start = time.perf_counter()
        engine.predict(sample)
        out[f"{prefix}predict_reviews_per_s"] = len(sample) / (time.perf_counter() - start)
        latencies = []
        for text in sample[: 20 if args.quick else 200]:
            start = time.perf_counter()
            engine.predict([text])
            latencies.append((time.perf_counter() - start) * 1000)
        p50, p95 = np.percentile(latencies, [50, 95]).tolist()
        out[f"{prefix}predict_latency_ms_p50"], out[f"{prefix}predict_latency_ms_p95"] = p50, p95
    if args.device != "cpu":  # PyTorch's figures on the accelerator (tokenization included), replacing the CPU ones
        predictor = Predictor(copy.deepcopy(model).to(args.device), dm.get_tokenizer(), args.max_length)
        predictor.predict(sample[:50])
        start = time.perf_counter()
        predictor.predict(sample, batch_size=512)
        out["predict_reviews_per_s"] = len(sample) / (time.perf_counter() - start)
    by_batch = {}  # the predict batch size: the default (64) was the fastest on a 2-core CPU
    for size in (16, 64, 256) if args.device == "cpu" else (64, 512, 2048):
        start = time.perf_counter()
        predictor.predict(sample, batch_size=size)
        by_batch[str(size)] = len(sample) / (time.perf_counter() - start)
    out["predict_reviews_per_s_by_batch_size"] = by_batch
    out["predict_sample"] = len(sample)
    return out


def work_figures(model: SentimentClassifier, batches: list[dict], dm: IMDBDataModule, figures: dict, args) -> dict:
    """Work done against what the CPU can do: forward+backward is ~3x the forward FLOPs; the padded
    tokens of the timed batches are what the recurrence actually runs over."""
    per_token = recurrent_flops_per_token(model.encoder)
    timed = batches[args.warmup:]
    padded = sum(b["input_ids"].numel() for b in timed) / sum(len(b["labels"]) for b in timed)
    lengths = dm.dataset("val").lengths[: figures["predict_sample"]]  # the first validation reviews, already tokenized
    out = {"train_gflops": figures["train_samples_per_s"] * padded * per_token * 3 / 1e9,
           "predict_gflops": figures["predict_reviews_per_s"] * float(np.mean(lengths)) * per_token / 1e9}
    # One time step's product: (batch, input + hidden) @ (input + hidden, gates * hidden).
    rnn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.RNNBase))
    gate_rows, inputs = rnn.weight_ih_l0.shape
    out["step_matmul_gflops"] = matmul_gflops(args.batch_size, inputs + rnn.hidden_size, gate_rows, 0.2 if args.quick else 1.0)
    return out


def levers(model: SentimentClassifier, batches: list[dict], args) -> dict:
    """Speed of the reference loop under other settings, relative to the default (>1: faster)."""
    print("  levers: threads, bf16 autocast, torch.compile", file=sys.stderr)
    loop = functools.partial(reference_loop, batches=batches, warmup=args.warmup, device=args.device)
    base = loop(copy.deepcopy(model))
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out["one_thread_vs_default"] = loop(copy.deepcopy(model)) / base
    torch.set_num_threads(threads)
    try:
        out["bf16_autocast_vs_fp32"] = loop(copy.deepcopy(model), bf16=True) / base
    except RuntimeError as err:  # oneDNN has no bf16 LSTM primitive on CPUs without native bf16
        out["bf16_autocast_vs_fp32"] = f"failed: {str(err).splitlines()[0][:120]}"
    compiled = torch.compile(copy.deepcopy(model).to(args.device), dynamic=True)
    out["torch_compile_vs_eager"] = loop(compiled) / base
    return out


def table(report: dict) -> str:
    rows = [
        ("train samples/s (Lightning)", "train_samples_per_s", "{:.0f}"),
        ("train samples/s (hand loop)", "loop_samples_per_s", "{:.0f}"),
        ("ratio vs loop", "ratio_vs_loop", "{:.3f}"),
        ("bucketed / packed", "bucketed_vs_packed", "{:.1f}x"),
        ("bucketed / fixed length", "bucketed_vs_fixed", "{:.2f}x"),
        ("predict reviews/s, batched: PyTorch", "predict_reviews_per_s", "{:.0f}"),
        ("predict reviews/s, batched: TorchScript", "torchscript_predict_reviews_per_s", "{:.0f}"),
        ("predict reviews/s, batched: ONNX Runtime", "onnx_predict_reviews_per_s", "{:.0f}"),
        ("one review p50 / p95 ms: PyTorch", ("predict_latency_ms_p50", "predict_latency_ms_p95"), "{:.1f} / {:.1f}"),
        ("one review p50 / p95 ms: TorchScript",
         ("torchscript_predict_latency_ms_p50", "torchscript_predict_latency_ms_p95"), "{:.1f} / {:.1f}"),
        ("one review p50 / p95 ms: ONNX Runtime",
         ("onnx_predict_latency_ms_p50", "onnx_predict_latency_ms_p95"), "{:.1f} / {:.1f}"),
        ("GFLOP/s achieved: training / batched predict", ("train_gflops", "predict_gflops"), "{:.0f} / {:.0f}"),
        ("GFLOP/s of one time step's matmul alone", "step_matmul_gflops", "{:.0f}"),
        ("peak RSS MB (one epoch)", "peak_rss_mb", "{:.0f}"),
        ("one epoch wall s", "epoch_wall_s", "{:.0f}"),
    ]
    names = list(report["encoders"])
    lines = [f"| figure | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for label, keys, fmt in rows:
        keys = keys if isinstance(keys, tuple) else (keys,)
        if all(k in report["encoders"][n] for n in names for k in keys):  # (--overhead: the training rows only)
            cells = [fmt.format(*(report["encoders"][n][k] for k in keys)) for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not report["overhead_only"]:
        cells = [" / ".join(f"{v:.0f}" for v in report["encoders"][n]["predict_reviews_per_s_by_batch_size"].values())
                 for n in names]
        lines.append("| predict reviews/s, PyTorch, batch 16 / 64 / 256 | " + " | ".join(cells) + " |")
        lines.append(
            f"\ntokenize {report['tokenize_reviews']} reviews: {report['tokenize_cold_s']:.1f} s cold, "
            f"{report['tokenize_warm_s']:.2f} s warm (cached); fp32 matmul 1024^3: {report['matmul_gflops']:.0f} GFLOP/s"
        )
    hb = report["host_bound"]
    shape = hb["shape"]
    lines.append(
        f"host-bound ({shape['encoder']} {shape['hidden_size']}, {shape['max_length']} words, batch {shape['batch_size']}; "
        f"each step beside one of the hand loop; median of {len(hb['ratio_rounds'])} rounds of {hb['steps']} steps): "
        f"ms per step: Lightning "
        f"{hb['lightning_ms_per_step']:.2f}, bare LightningModule {hb['bare_lightning_ms_per_step']:.2f}, "
        f"hand loop {hb['loop_ms_per_step']:.2f}; loop/Lightning {hb['host_bound_ratio']:.3f} "
        f"(interquartile {hb['ratio_iqr'][0]:.3f}-{hb['ratio_iqr'][1]:.3f}), loop/bare {hb['bare_ratio']:.3f} "
        f"(interquartile {hb['bare_ratio_iqr'][0]:.3f}-{hb['bare_ratio_iqr'][1]:.3f})")
    for n in names:
        figures = report["encoders"][n]
        rounds = ", ".join(f"{r:.3f}" for r in figures["ratio_rounds"])
        lines.append(f"{n}: ratio vs loop per round {rounds}; median {figures['ratio_vs_loop']:.3f}, "
                     f"interquartile {figures['ratio_iqr'][0]:.3f}-{figures['ratio_iqr'][1]:.3f}")
    m = report["machine"]
    lines.append(f"machine: {m['cpu']} ({' '.join(m['cpu_flags']) or 'flags unknown'}), {m['cores']} cores, "
                 f"{m['threads']} threads, torch {m['torch']}, lightning {m['lightning']}, device {m['device']}, "
                 f"training precision {report['settings']['precision']}"
                 + (f" ({m['gpu']}, CUDA {m['cuda']})" if "gpu" in m else ""))
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    parser = ArgumentParser(prog="imdb-lightning bench", description=__doc__.splitlines()[0])
    parser.add_argument("--train_files", help="labelled reviews (parquet/csv/jsonl); default: synthetic IMDB-length reviews")
    parser.add_argument("--encoders", type=comma_list(), default=["bilstm"], help=f"comma-separated, from {','.join(RECURRENT)}")
    parser.add_argument("--embed_dim", type=int, default=128)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--max_length", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=24, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=7, help="Lightning/loop alternations; median and spread are reported")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="where training and PyTorch predict run")
    parser.add_argument("--nondeterministic", dest="deterministic", action="store_false",
                        help="time Lightning with deterministic=False (the shipped default is True)")
    parser.add_argument("--tokenize_reviews", type=int, default=50000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: checks that the bench runs")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true",
                        help="training precision of the Lightning run and the loop (bf16-mixed autocasts, as in fit)")
    parser.add_argument("--levers", action="store_true", help="also time 1 thread, bf16 autocast and torch.compile")
    parser.add_argument("--overhead", action="store_true",
                        help="training speed only: the host-bound case and each encoder's Lightning/loop ratio (about a minute)")
    parser.add_argument("--host_bound_steps", type=int, default=40, help="timed steps per round of the host-bound case")
    parser.add_argument("--host_bound_rounds", type=int, default=30, help="rounds of the host-bound case")
    parser.add_argument("--out", default="bench.json", help="where the JSON is written")
    args = parser.parse_args(argv)
    for option in ("steps", "rounds", "host_bound_steps", "host_bound_rounds", "batch_size", "max_length", "embed_dim",
                   "hidden_size", "tokenize_reviews"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1, got {getattr(args, option)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: no CUDA GPU is available here")
    args.device = "cuda" if args.accelerator == "gpu" else "cpu"
    if args.precision == "bf16-mixed" and args.device == "cpu" and not cpu_runs_bf16():
        parser.error(f"--precision bf16-mixed: {NO_BF16}")
    unknown = set(args.encoders) - set(RECURRENT)
    if unknown:
        parser.error(f"unknown encoder(s) {', '.join(sorted(unknown))}; choose from {', '.join(RECURRENT)}")
    report = run(args)
    print(table(report))
    print(json.dumps(report))
    Path(args.out).write_text(json.dumps(report, indent=2))
    return report
