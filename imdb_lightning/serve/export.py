"""`imdb-lightning export`: a checkpoint as ONNX or TorchScript, with its tokenizer and a loader."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..arguments import ArgumentParser
from ..errors import UserError
from . import runtime
from .predictor import LinearPredictor, Predictor, load


class Probabilities(nn.Module):
    """(input_ids, lengths) -> P(positive): the encoder and head, without Lightning around them."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, lengths)).squeeze(-1).sigmoid()  # (batch,)


def export(ckpt_path: str, fmt: str, out: str | Path) -> Path:
    predictor = load(ckpt_path)
    if isinstance(predictor, LinearPredictor):
        raise UserError(f"--ckpt_path {ckpt_path}: a run folder of `imdb-lightning linear` (a linear model or a stack); "
                        "export writes recurrent checkpoints only. Apply this one with: imdb-lightning predict "
                        f"--ckpt_path {ckpt_path} --file reviews.txt")
    return export_predictor(predictor, fmt, out, source=str(ckpt_path))


def check_parity(model: nn.Module, folder: Path) -> None:
    """The exported model must give the checkpoint's probabilities on inputs of other shapes than the
    example it was traced with: tracing records one run, and an encoder whose Python code loops over
    time (or branches on a value) would be fixed at the example's length."""
    generator = torch.Generator().manual_seed(0)
    exported = runtime.ExportedClassifier(folder)
    for batch, length in ((1, 1), (3, 12), (4, 37)):
        ids = torch.randint(2, 50, (batch, length), generator=generator)
        lengths = torch.randint(1, length + 1, (batch,), generator=generator)
        lengths[0] = length
        with torch.no_grad():
            expected = model(ids, lengths).numpy()
        try:
            got = exported.probabilities(ids.numpy(), lengths.numpy())
            differs = float(abs(got - expected).max()) > 1e-4
        except Exception:  # noqa: BLE001  (the runtime refused another shape: the same verdict)
            differs = True
        if differs:
            encoder = type(model.encoder).__name__
            raise UserError(f"export: the exported {encoder} does not reproduce the checkpoint on a batch of {batch} "
                            f"review(s) of {length} tokens (tracing fixed what its Python code does at one input shape); "
                            "this encoder cannot be exported: predict with the checkpoint itself (imdb-lightning predict)")


def export_predictor(predictor: Predictor, fmt: str, out: str | Path, source: str = "") -> Path:
    """Write model.onnx or model.pt, tokenizer.json, meta.json and classify.py into `out`."""
    model = Probabilities(predictor.model.encoder, predictor.model.head).eval()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; export writes a folder (model, tokenizer.json, meta.json, classify.py)")
    try:  # everything is written beside `out` first, then moved in: a failure leaves no half export
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from err
    try:
        _write(model, predictor, fmt, tmp, source)
        check_parity(model, tmp)
        if not out.exists():
            os.replace(tmp, out)
        else:
            for file in tmp.iterdir():
                os.replace(file, out / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(model: nn.Module, predictor: Predictor, fmt: str, out: Path, source: str) -> None:
    # Example inputs of two lengths; batch and time stay dynamic in both formats.
    example = (torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]]), torch.tensor([5, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter chatter about shapes we keep dynamic
        if fmt == "onnx":
            file = "model.onnx"
            # The TorchScript-based exporter: dynamic batch and time axes verified by the parity test;
            # the dynamo exporter produced a graph onnxruntime rejected for a new sequence length.
            torch.onnx.export(
                model, example, out / file, input_names=["input_ids", "lengths"], output_names=["probabilities"],
                dynamic_axes={"input_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=17, dynamo=False,
            )
        else:
            file = "model.pt"
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(out / file))
    predictor.tokenizer.save(str(out / "tokenizer.json"))
    meta = {"format": fmt, "file": file, "max_length": predictor.max_length, "truncation": predictor.truncation,
            "checkpoint": source}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.copy(runtime.__file__, out / "classify.py")


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="imdb-lightning export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--out", required=True, help="folder to write model, tokenizer.json, meta.json, classify.py")
    opts = parser.parse_args(argv)
    out = export(opts.ckpt_path, opts.format, opts.out)
    print(f"exported to {out}; try: python {out / 'classify.py'} \"a wonderful film\"")
