"""TensorBoard's HParams tab: one row per fit, its settings as a reader names them, its hp/ figures beside them.

The columns are declared with TensorBoard's own hparams API (`hparams_config`), the same for every run, and
each run's values (`hparams`, its session) are written to an event file of their own in the run folder,
`SESSION_FILE`: a resumed fit rewrites it with the settings it goes on with (config.yaml's), and a fit that
ends adds an end file (status: success, and its wall time from run.json). A `test` of a fit's best checkpoint
adds its hp/test_acc to that fit's folder, so the figure lands in the fit's row. hparams.yaml is left
as Lightning writes it (the model's and data module's arguments; config.yaml has the whole configuration).
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Optional

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp  # what `hparams.api` exports, without its Keras part (TensorFlow)
from tensorboard.summary.writer.record_writer import RecordWriter

from ..runs import best_checkpoint, read_record
from .encoders import ENCODERS, POOLINGS, NBoWEncoder, RecurrentEncoder, ScratchRNNEncoder
from .linear import DEFAULT_C


class _Number(hp.Domain):
    """A numeric column without bounds to declare (TensorBoard then offers a min-max filter)."""

    dtype = float

    def sample_uniform(self, rng=None):
        raise NotImplementedError("a column's domain, not a search space")

    def update_hparam_info(self, hparam_info) -> None:
        hparam_info.type = api_pb2.DATA_TYPE_FLOAT64


NUMBER = _Number()
# TensorBoard's server lists hyperparameters sorted by name, and its table shows the first five of them:
# each name starts with its place, and the display name is what a reader sees.
_COLUMNS = [
    # (a linear reference's row names its model: tfidf, nbsvm; n-gram variants and stacks by their run name)
    ("encoder", hp.Discrete([*ENCODERS, "scratch_rnn", *DEFAULT_C]), "the encoder: a name of the encoder registry"),
    ("bidirectional", hp.Discrete(["false", "true"]), "whether the recurrent layers read both ways"),
    ("hidden size", NUMBER, "units per direction of each recurrent layer"),
    ("embedding size", NUMBER, "width of the word vectors"),
    ("layers", NUMBER, "stacked recurrent layers"),
    ("pooling", hp.Discrete(list(POOLINGS)), "how the states over time become one vector"),
    ("dropout", NUMBER, "dropout before the linear head (model.dropout)"),
    ("adversarial", NUMBER, "size of the adversarial push on word embeddings (0: off)"),
    ("learning rate", NUMBER, "the optimizer's configured rate (the head's, with per-layer rates)"),
    ("batch size", NUMBER, "training reviews per batch and process"),
    ("max epochs", NUMBER, "the epoch budget (early stopping may end sooner; run.json has the epochs run)"),
    ("vocabulary", NUMBER, "words the tokenizer keeps (data.vocab_size)"),
    ("seed", NUMBER, "seed_everything"),
    ("val split", hp.Discrete(["grouped", "random"]), "grouped: whole films held out; random: reviews"),
    ("split seed", NUMBER, "data.split_seed: which films (or reviews) validate"),
    ("pretrained", hp.Discrete(["no", "yes"]), "whether the encoder started from a language model"),
]
HPARAMS = [hp.HParam(f"{place:02d} {label}", domain, display_name=label, description=about)
           for place, (label, domain, about) in enumerate(_COLUMNS, 1)]
NAMES = {param.display_name: param.name for param in HPARAMS}
METRICS = [
    hp.Metric("hp/val_acc", display_name="val acc", description="best validation accuracy so far",
              dataset_type=hp.Metric.VALIDATION),
    hp.Metric("hp/val_acc_se", display_name="val acc se",
              description="its standard error, films as clusters (compare's ±95% is 1.96 times it)",
              dataset_type=hp.Metric.VALIDATION),
    hp.Metric("hp/test_acc", display_name="test acc", description="accuracy of the best checkpoint on the test split"),
    hp.Metric("hp/wall_s", display_name="wall s", description="the fit's wall time in seconds (run.json)"),
]
# Event files of their own. The session's sorts before Lightning's, so TensorBoard reads it first; the end
# and test files are named by their time, as Lightning's are, so a running TensorBoard reads them as new files.
SESSION_FILE = "events.out.tfevents.0.hparams"
END, TEST = "hparams_end", "test_acc"


def _timed(kind: str) -> str:
    return f"events.out.tfevents.{time.time() * 1e6:.0f}.{kind}"


def encoder_name(spec: dict) -> str:
    """The registry's name of an encoder given as {class_path, init_args} (a checkpoint's, a config's): lstm,
    bigru, nbow, ...; scratch_rnn for ScratchRNNEncoder; a SimpleRNN read both ways is rnn (its bidirectional
    column says so); an encoder from elsewhere, its class name."""
    cls_name = str(spec.get("class_path", "")).rpartition(".")[2]
    args = {**_defaults(cls_name), **(spec.get("init_args") or {})}
    for name, (cls, preset) in ENCODERS.items():
        if cls.__qualname__ == cls_name and all(args.get(k) == v for k, v in preset.items()):
            return name
    if cls_name == ScratchRNNEncoder.__qualname__:
        return "scratch_rnn"
    return str(args.get("cell")) if cls_name == RecurrentEncoder.__qualname__ else cls_name


def _defaults(cls_name: str) -> dict:
    known = {cls.__qualname__: cls for cls in (RecurrentEncoder, NBoWEncoder, ScratchRNNEncoder)}
    if cls_name not in known:
        return {}
    parameters = inspect.signature(known[cls_name].__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def session_values(module, trainer) -> dict:
    """The run's row, read from what it uses: the model's settings, the optimizer's rate, the trainer's
    budget, the data module's batches, vocabulary and split, the seed Lightning set."""
    spec = module.hparams["encoder"]
    args = spec.get("init_args", {})
    datamodule = trainer.datamodule
    data = dict(getattr(datamodule, "hparams", {}) or {})
    validation = getattr(datamodule, "validation", None) or {}
    seed = os.environ.get("PL_GLOBAL_SEED")
    values = {
        "encoder": encoder_name(spec),
        "bidirectional": str(bool(args.get("bidirectional", False))).lower(),
        "hidden size": args.get("hidden_size"),
        "embedding size": args.get("embed_dim"),
        "layers": args.get("num_layers", 1) if "hidden_size" in args else None,  # (the NBoW has none)
        "pooling": args.get("pooling"),
        "dropout": module.hparams.get("dropout"),
        "adversarial": module.hparams.get("adversarial"),
        "learning rate": trainer.optimizers[0].defaults.get("lr") if trainer.optimizers else None,
        "batch size": data.get("batch_size"),
        "max epochs": trainer.max_epochs,
        "vocabulary": data.get("vocab_size"),
        "seed": int(seed) if seed is not None else None,
        "val split": validation.get("kind"),
        "split seed": data.get("split_seed"),
        "pretrained": "yes" if module.hparams.get("pretrained") else "no",
    }
    return {NAMES[label]: value for label, value in values.items() if value is not None}


def _summary(tag: str, value: float) -> summary_pb2.Summary:
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])


def _write_events(path: Path, summaries: list[summary_pb2.Summary], step: int = 0) -> None:
    """An event file of these summaries, renamed into place whole (its temporary name is not one
    TensorBoard reads, so a half-written file is never loaded)."""
    tmp = path.with_name(f".hparams.{os.getpid()}.tmp")
    now = time.time()
    try:
        with open(tmp, "wb") as file:
            writer = RecordWriter(file)
            writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
            for summary in summaries:
                writer.write(event_pb2.Event(wall_time=now, step=step, summary=summary).SerializeToString())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def start_session(folder: Path, values: dict) -> None:
    """The columns and this run's row, its trial id the run folder (`gru/version_0`): a row of its own even
    beside a run of the same settings. TensorBoard keeps the first session it reads of a run, so a resumed
    fit replaces the file rather than adding to it; a server already running shows the new values once restarted."""
    for end in folder.glob(f"events.out.tfevents.*.{END}"):
        end.unlink(missing_ok=True)  # running again: not finished
    row = hp.hparams_pb(values, trial_id=f"{folder.parent.name}/{folder.name}")
    _write_events(folder / SESSION_FILE, [hp.hparams_config_pb(HPARAMS, METRICS), row])


def end_session(folder: Path, step: int, figures: Optional[dict] = None) -> None:
    """A run that ended: status success, and its figures (default: the fit's wall time, from its run.json)."""
    # (the session's end as TensorBoard's v1 `session_end_pb` writes it; that module needs TensorFlow)
    info = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()))
    end = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(info), tensor=metadata.NULL_TENSOR)])
    if figures is None:
        figures = {"hp/wall_s": read_record(folder).get("wall_s")}
    scalars = [_summary(tag, value) for tag, value in figures.items() if value is not None]
    _write_events(folder / _timed(END), [end, *scalars], step)


def linear_session(folder: Path, record: dict, data: dict) -> None:
    """A linear reference's row (`imdb-lightning linear`): its model as the encoder, its split and seed,
    and its figures as `compare` reads them (a stack's wall time with its recurrent runs')."""
    values = {"encoder": record.get("model"), "seed": record.get("seed") if isinstance(record.get("seed"), int) else None,
              "val split": (record.get("validation") or {}).get("kind"), "split seed": data.get("split_seed"),
              "pretrained": "no" if not record.get("checkpoints") else None}
    start_session(folder, {NAMES[k]: v for k, v in values.items() if v is not None})
    wall_s = record.get("total_wall_s") if record.get("checkpoints") else record.get("wall_s")
    end_session(folder, 0, {"hp/val_acc_se": record.get("val_acc_se"), "hp/test_acc": record.get("test", {}).get("test/acc"),
                            "hp/wall_s": wall_s})


def tested_session(checkpoint: Optional[str], own_folder: Optional[str]) -> Optional[Path]:
    """The fit folder a test's hp/test_acc belongs to, where that is not the test's own: the run whose
    best checkpoint was tested, when it has an HParams row."""
    if not checkpoint:
        return None
    folder = Path(checkpoint).resolve().parent.parent
    if own_folder and folder == Path(own_folder).resolve():
        return None
    best = best_checkpoint(folder)
    if best is None or best.resolve() != Path(checkpoint).resolve() or not (folder / SESSION_FILE).is_file():
        return None
    return folder


def add_test_accuracy(folder: Path, test_acc: float, step: int) -> None:
    """hp/test_acc in the fit's own folder: the newest test of its best checkpoint is the row's figure."""
    _write_events(folder / _timed(TEST), [_summary("hp/test_acc", test_acc)], step)
