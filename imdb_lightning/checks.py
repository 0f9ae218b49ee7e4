"""What a run is checked for before it starts: each check names the option at fault in one line, before a run
folder or any file is made. Plain functions over the parsed configuration, a checkpoint read, or the built
trainer, model and data module; the command line's parser (training.py) and `experiment.run_experiment` call them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .checkpoints import data_identity, data_settings
from .data.corpus import CorpusDataModule
from .data.datamodule import IMDBDataModule
from .data.identity import LOCATION, PREPROCESSING, SOURCE, SPLIT, changed_meaning, refuse_change, same_setting
from .data.tokenizer import check_words
from .errors import UserError
from .machine import NO_BF16, available_memory, cpu_runs_bf16
from .models.base import sized_by_steps
from .models.encoders import count_parameters
from .pretrained import check_unread, resolve
from .runs import RECORD, read_record, run_configuration

# --- the parsed configuration, before anything is built ---------------------------------------------------


def check_accelerator(trainer_config) -> None:
    """An accelerator this machine lacks (a GPU, a TPU) or that does not exist: one line, as `bench
    --accelerator gpu` gives, rather than Lightning's error from deep inside (a missing torch_xla, say)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    accelerator = trainer_config.get("accelerator")
    if not isinstance(accelerator, str) or accelerator.lower() == "auto":
        return
    name = accelerator.lower()
    known = {*AcceleratorRegistry.available_accelerators(), "gpu"}
    if name not in known:
        raise UserError(f"--trainer.accelerator {accelerator}: no such accelerator; use one of auto, {', '.join(sorted(known))}")

    def available(name: str) -> bool:
        try:
            return bool(AcceleratorRegistry[name]["accelerator"].is_available())
        except Exception:  # noqa: BLE001  (its library is missing: torch_xla for a TPU)
            return False

    if not (available("cuda") or available("mps") if name == "gpu" else available(name)):
        device = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}.get(name, name.upper())
        raise UserError(f"--trainer.accelerator {accelerator}: no {device} is available here; leave the option out "
                        "(or --trainer.accelerator cpu) to run on the CPU")


TRAINING_BYTES = 16  # per fp32 parameter while training on a CPU: the weight, its gradient and Adam's two moments


def check_model_fits(model_config, on_cpu: bool) -> None:
    """A model larger than the memory left (a vocabulary cap of 100 million words, say) is refused before it
    is built: built, it would have the kernel kill the fit later, without a word."""
    encoder = model_config.get("encoder") if hasattr(model_config, "get") else None
    class_path, init = getattr(encoder, "class_path", None), getattr(encoder, "init_args", None)
    if not isinstance(class_path, str):
        return
    kwargs = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
    try:
        parameters = count_parameters({"class_path": class_path, "init_args": kwargs})
    except UserError:  # a setting the encoder refuses, in its own words
        raise
    except RuntimeError as err:  # sizes whose byte count overflows 64 bits; else an operation meta tensors lack
        if "overflow" in str(err):
            raise UserError(f"model.encoder: far too large to build ({str(err).splitlines()[0]}); lower its sizes") from err
        return
    except Exception:  # noqa: BLE001  (building it for real says what is wrong)
        return
    need, free = parameters * (TRAINING_BYTES if on_cpu else 4), available_memory()
    if free is None or need <= free:
        return
    vocab, width = kwargs.get("vocab_size"), kwargs.get("embed_dim")
    if isinstance(vocab, int) and isinstance(width, int) and vocab * width > parameters / 2 and vocab > width:
        hint = (f"; most of it is the word embedding, data.vocab_size {vocab:,} x embed_dim {width}: the cap counts rows "
                "for words, and rows beyond the words the training data hold are never used, so lower --data.vocab_size")
    elif isinstance(width, int) and isinstance(vocab, int) and vocab * width > parameters / 2:
        hint = f"; most of it is the word embedding, data.vocab_size {vocab:,} x embed_dim {width:,}: lower embed_dim"
    else:
        hint = "; lower its sizes"
    purpose = "train here (weights, gradients and Adam's state)" if on_cpu else "build"
    raise UserError(f"model.encoder: {parameters:,} parameters need about {need / 2**30:.1f} GiB to {purpose}, and this "
                    f"machine has {free / 2**30:.1f} GiB free{hint}")


def check_buildable(config) -> None:
    """Before anything is built: Lightning's own answer to a missing GPU says less, and a model too large for the
    memory is a kill, with no word, once training touches it."""
    import torch

    check_accelerator(config.trainer)
    vocab = (config.get("data") or {}).get("vocab_size")  # (named before the encoder it sizes refuses it as its own)
    if isinstance(vocab, int) and vocab < 3:
        raise UserError(f"data.vocab_size must leave room for a word beside <pad> and <unk>, got {vocab}")
    check_model_fits(config.model, on_cpu=config.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available())


# --- a checkpoint to go on from, or to evaluate -------------------------------------------------------------


def check_resumed_settings(config, ckpt: dict) -> None:
    """A resumed fit goes on with the checkpoint's model: LightningCLI takes every model setting saved in
    it (the encoder and its sizes, dropout, adversarial, lr_decay, ...) over the command line's. So one
    that differs is refused here, naming it, rather than dropped silently. Settings not saved in the
    model (optimizer, schedule, trainer, data) apply; a changed learning rate is applied on resume."""
    saved = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    mine = config.model.as_dict() if hasattr(config.model, "as_dict") else dict(config.model)
    for key, old, new in _differences(saved, mine):
        hint = " (data.vocab_size sets it)" if key.endswith("vocab_size") else ""
        raise UserError(f"--ckpt_path {config.ckpt_path}: its run used model.{key}={old}, this one {new}{hint}; a resumed fit "
                        "goes on with the checkpoint's model: resume with its settings, or start a new run without --ckpt_path")


def check_resumed_length(config, ckpt: dict) -> None:
    """A resume that has nothing to train, or that Lightning would refuse (fewer epochs than the checkpoint
    has trained), is refused here, before anything is written, saying how to go on."""
    done = {"max_epochs": ckpt.get("epoch"), "max_steps": ckpt.get("global_step")}
    run = Path(config.ckpt_path).parent.parent
    finished = (run / RECORD).is_file() and read_record(run).get("status") == "finished"
    for key, unit in (("max_epochs", "epochs"), ("max_steps", "steps")):
        limit, trained = config.trainer.get(key), done[key]
        if limit in (None, -1) or trained is None or trained < limit or (trained == limit and not finished):
            continue
        state = (f"has trained {trained} {unit} already" if trained > limit else
                 f"has trained its {trained} {unit}: nothing is left to train")
        raise UserError(f"--trainer.{key} {limit}: {config.ckpt_path} {state}; to train on, resume with --trainer.{key} "
                        f"{trained + 1} or more (a fit of {limit} {unit[:-1] if limit == 1 else unit} is a new run: leave "
                        "out --ckpt_path). Nothing was changed")


# What sets how many steps a run takes: a schedule sized in steps (OneCycleLR) was sized to them.
RUN_LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches", "trainer.accumulate_grad_batches",
              "data.batch_size")


def check_resumed_schedule(config, ckpt: dict) -> None:
    """A schedule sized in steps runs from its first step to its last over the run it was sized to: a resume that
    changes that run's length would step it past its end (torch raises on the step after) or stop it midway."""
    sized = [s["total_steps"] for s in ckpt.get("lr_schedulers") or [] if isinstance(s, dict) and s.get("total_steps")]
    run = Path(config.ckpt_path).parent.parent
    before = run_configuration(run) if sized and (run / RECORD).is_file() else None
    for key in RUN_LENGTH if before else ():
        section, name = key.split(".")
        old, new = (before.get(section) or {}).get(name), (config.get(section) or {}).get(name)
        if old is not None and new is not None and old != new:
            raise UserError(f"--{key} {new}: the learning-rate schedule of {config.ckpt_path} is sized in steps (OneCycleLR) "
                            f"to its run's {sized[0]} steps, with {key} {old}, and cannot be stretched or cut; resume with "
                            f"--{key} {old}, or start a new run without --ckpt_path. Nothing was changed")


def check_resumed_batches(config, ckpt: dict) -> None:
    """A checkpoint saved mid-epoch resumes after the batches that epoch had trained, counted in batches: at
    another batch size that count would skip other reviews (some trained twice in the epoch, some never)."""
    position = next((state["train_position"] for state in ckpt.values()
                     if isinstance(state, dict) and isinstance(state.get("train_position"), dict)), {})
    done, saved = position.get("batches_done", 0), data_settings(ckpt).get("batch_size")
    wanted = (config.get("data") or {}).get("batch_size")
    if done and saved is not None and wanted is not None and wanted != saved:
        raise UserError(f"--data.batch_size {wanted}: {config.ckpt_path} was saved {done} batches of {saved} into epoch "
                        f"{position.get('epoch')}; resume with --data.batch_size {saved} (a new batch size can start from a "
                        "checkpoint saved at an epoch's end). Nothing was changed")


def check_resumed_data(config, ckpt: dict) -> None:
    """A resumed fit's split and preprocessing are its checkpoint's (the reviews themselves are checked by
    digest as the checkpoint loads)."""
    change = changed_meaning(data_settings(ckpt), config.data.as_dict(), (*SOURCE, *SPLIT, *PREPROCESSING))
    if change:
        raise refuse_change(config.ckpt_path, *change)


def checkpoint_data(config, ckpt: dict, subcommand: str) -> None:
    """`validate` and `test` read the data settings that define a checkpoint's figures from the checkpoint
    (as `predict` does): its preprocessing, and for `validate` its split and training reviews. With
    `--data_settings command_line` they keep this command line's; either way a difference is said in
    one line, and run.json records which were used."""
    saved, data = data_settings(ckpt), config.data
    keys = PREPROCESSING if subcommand == "test" else (*PREPROCESSING, *SPLIT, *SOURCE)
    # where the reviews are: the checkpoint's, unless this command line names its own (then checked by digest)
    named = (subcommand == "test" and data.test_files) or data.train_files or data.aclimdb_dir or data.source
    if not named:
        keys += tuple(k for k in LOCATION if subcommand == "validate" or k != "train_files")
    differ = [(key, saved[key], data[key]) for key in keys if key in saved and not same_setting(saved[key], data[key])]
    if not differ:
        return
    if config.get("data_settings") == "command_line":
        said = ", ".join(f"data.{key} {new} (the checkpoint's: {old})" for key, old, new in differ)
        print(f"{subcommand}: with this command line's data settings, not the checkpoint's: {said}; run.json records it",
              file=sys.stderr)
        return
    for key, old, _ in differ:
        data[key] = old
    said = ", ".join(f"data.{key} {old} (this command line: {new})" for key, old, new in differ)
    print(f"{subcommand}: with the checkpoint's data settings, which define what its figures mean: {said}; "
          "--data_settings command_line evaluates with this command line's instead", file=sys.stderr)


def _differences(saved: dict, mine: dict, prefix: str = ""):
    for key in saved.keys() & mine.keys():
        old, new = saved[key], mine[key]
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _differences(old, new, f"{prefix}{key}.")
        elif (list(old) if isinstance(old, (list, tuple)) else old) != (list(new) if isinstance(new, (list, tuple)) else new):
            yield f"{prefix}{key}", old, new


# --- the built trainer, model and data module, before a stage runs ------------------------------------------


def check_something_to_do(trainer, model, stage: str) -> None:
    """A fit told to train nothing, or a test told to test nothing, would end "finished" with no checkpoint
    or figure and no word; a fit that never validates would crash at its first epoch's end, when what watches
    the validation figures (best checkpoint, early stopping, schedule) finds none."""
    counts, batches = "1 or more", "a fraction above 0 or a count"
    options = {"fit": [("max_epochs", trainer.max_epochs, counts), ("max_steps", trainer.max_steps, counts),
                       ("limit_train_batches", trainer.limit_train_batches, batches)],
               "validate": [("limit_val_batches", trainer.limit_val_batches, batches)],
               "test": [("limit_test_batches", trainer.limit_test_batches, batches)]}[stage]
    for option, value, wanted in options:
        if value == 0:
            what = {"fit": "trained and no checkpoint written", "validate": "validated", "test": "tested"}[stage]
            hint = " (to score a checkpoint without training: imdb-lightning validate or test --ckpt_path CKPT)"
            raise UserError(f"--trainer.{option} {value:g}: nothing would be {what}; give {wanted}"
                            + (hint if stage == "fit" else ""))
    if stage != "fit":
        return
    watched = [monitor for _, monitor in watchers(trainer, model) if isinstance(monitor, str) and monitor.startswith("val/")]
    if trainer.limit_val_batches == 0 and watched:
        raise UserError(f"--trainer.limit_val_batches 0: nothing would be validated, and {watched[0]} is watched "
                        f"(by the best checkpoint, early stopping or the schedule); give {batches}")
    interval = trainer.val_check_interval  # (Lightning divides by it: 0 is a ZeroDivisionError mid-epoch)
    if isinstance(interval, (int, float)) and interval <= 0:
        raise UserError(f"--trainer.val_check_interval {interval}: validate every 1 or more training batches (a "
                        "count) or a fraction of an epoch above 0 (e.g. 0.5)")
    every = trainer.check_val_every_n_epoch
    if every is not None and every < 1:
        raise UserError(f"--trainer.check_val_every_n_epoch {every}: validate every 1 or more epochs (or null, with "
                        "--trainer.val_check_interval counting steps)")
    schedule = [m for owner, m in watchers(trainer, model) if owner.startswith("model.monitor") and m in watched]
    if every and every > 1 and schedule:
        raise UserError(f"--trainer.check_val_every_n_epoch {every}: the learning-rate schedule steps every epoch on "
                        f"{schedule[0]}, which validation would compute every {every} epochs only; validate every epoch, or "
                        "leave the schedule out (--model.scheduler null)")


def check_precision(trainer) -> None:
    """bf16 on a CPU without it ends in a oneDNN error deep inside an LSTM, or a run ten times slower."""
    precision = str(trainer.precision)
    if "bf16" in precision and trainer.strategy.root_device.type == "cpu" and not cpu_runs_bf16():
        raise UserError(f"--trainer.precision {precision}: {NO_BF16}, so an LSTM would fail and other layers "
                        "run about 10x slower; use --trainer.precision 32-true here, or a GPU")


def watchers(trainer, model) -> list[tuple[str, str]]:
    """(who, metric) for every callback and schedule that watches a metric."""
    found = [(f"trainer.callbacks {type(cb).__name__}", cb.monitor) for cb in trainer.callbacks
             if getattr(cb, "monitor", None)]
    if getattr(model, "scheduler", None) is not None and not sized_by_steps(model.scheduler):
        found.append(("model.monitor (the learning-rate schedule's metric)", model.hparams.monitor))
    return found


def check_monitors(trainer, model) -> None:
    """Every metric a callback or the schedule watches must be one the model logs."""
    known = getattr(model, "metric_names", lambda: None)()
    if not known:
        return
    for owner, monitor in watchers(trainer, model):
        if monitor not in known:
            raise UserError(f"{owner}: monitor {monitor!r} is never logged; the model logs {', '.join(sorted(known))}")


def check_optimizer(model) -> None:
    """A setting torch refuses (a negative learning rate, betas outside [0, 1), a plateau factor of 2) is
    named before the run starts: the optimizer and schedule are built once here, on the model's parameters."""
    optimizer, scheduler = getattr(model, "optimizer", None), getattr(model, "scheduler", None)
    if not callable(optimizer):
        return
    try:
        built = optimizer(model.parameters())
    except (ValueError, TypeError) as err:
        raise UserError(f"model.optimizer: {err}") from err
    if not callable(scheduler):
        return
    try:
        scheduler(built, total_steps=100) if sized_by_steps(scheduler) else scheduler(built)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise UserError(f"model.scheduler: {err}") from err


def check_data(stage: str, datamodule, model, config, checkpoint: dict | None) -> None:
    """Read the data before Lightning starts (and makes a run folder): a bad file fails here, in one line. The
    reviews must also be the ones a resumed fit's or a validated checkpoint's run read, and not ones its language
    model read. (`config`: the command's, for --ckpt_path and --data_settings; a forecaster's series are read
    as it sets up.)"""
    if isinstance(datamodule, CorpusDataModule):
        datamodule.stream("train")
    if not isinstance(datamodule, IMDBDataModule):
        return
    for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]:
        datamodule.reviews(split)
    if stage == "fit":  # (reviews with no words at all)
        check_words(datamodule.reviews("train").texts)
    if stage == "fit" and checkpoint is not None:  # the reviews themselves, before Lightning makes any file
        datamodule.check_resume(data_identity(checkpoint), config.ckpt_path)
    saved = data_identity(checkpoint or {}).get("val_digest")
    if stage == "validate" and saved and config.get("data_settings") != "command_line" and datamodule.digest("val") != saved:
        raise UserError(f"--ckpt_path {config.ckpt_path}: the validation reviews carved from these training data differ "
                        "from the ones its fit validated on (other training files, or changed ones); validate with the "
                        "data it was trained on, or pass --data_settings command_line to score it on these (run.json "
                        "then says so)")
    if model.hparams.get("pretrained"):  # the language model must not have read what is scored
        split = "test" if stage == "test" else "val"
        check_unread(resolve(model.hparams.pretrained), datamodule.reviews(split).texts, split, dict(datamodule.hparams))
