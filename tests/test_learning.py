import lightning as L
import pytest

from conftest import RECURRENT_PRESETS as ENCODERS
from conftest import quick_trainer
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import Recurrence, RecurrentEncoder


@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_learns_word_order_on_synthetic_reviews(name, synthetic, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = synthetic(synthetic_size=2000, synthetic_median_words=30, max_length=100)
    encoder = RecurrentEncoder(vocab_size=500, embed_dim=32, hidden_size=32, **ENCODERS[name])
    model = SentimentClassifier(encoder, optimizer=lambda p: __import__("torch").optim.Adam(p, lr=3e-3))
    trainer = quick_trainer(tmp_path)
    trainer.fit(model, dm)
    accuracy = trainer.validate(model, dm, verbose=False)[0]["val/acc"]
    assert accuracy >= 0.90, f"{name}: {accuracy:.3f}"


def test_one_cycle_schedule_is_sized_to_the_run_and_stepped_per_batch(synthetic, tmp_path):
    import functools

    import torch

    L.seed_everything(0, verbose=False)
    dm = synthetic(synthetic_size=600)
    encoder = RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=16, cell="gru")
    schedule = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01)
    model = SentimentClassifier(encoder, scheduler=schedule)
    used = []  # the learning rate each training batch ran with

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            used.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quick_trainer(tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[Record()])
    trainer.fit(model, dm)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.total_steps == 8
    assert len(used) == 8 and len(set(used)) == 8  # a new rate for every batch
    assert 0.009 < max(used) <= 0.01 and used[0] < 0.01 / 10 and used[-1] < 0.01 / 1000  # up to max_lr, then annealed


def test_adversarial_step_moves_each_review_by_its_share_of_its_embedding_norm():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    eps = 1e-3
    encoder = RecurrentEncoder(vocab_size=50, embed_dim=8, hidden_size=6, cell="gru", pooling="max_mean", bidirectional=True)
    model = SentimentClassifier(encoder, adversarial=eps).eval()  # no dropout: both passes see the same network
    ids = torch.randint(2, 50, (3, 10))
    ids[1, 6:] = 0  # a padded review
    batch = {"input_ids": ids, "lengths": torch.tensor([10, 6, 10]), "labels": torch.tensor([1, 0, 1])}
    logits, embedded = model._logits(batch)
    loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].float())
    (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)  # (time, batch, embed)
    adversarial = model._adversarial_loss(loss, embedded, batch)
    # to first order the push raises the loss by sum_i eps * |x_i| * |g_i|: the gradient's own direction, at full size
    expected = (eps * embedded.detach().norm(dim=(0, 2)) * grad.norm(dim=(0, 2))).sum()
    assert adversarial > loss
    torch.testing.assert_close(adversarial - loss, expected, rtol=0.05, atol=0)
    assert grad[6:, 1].abs().sum() == 0  # padding is never pushed


def test_adversarial_training_learns_and_logs_both_losses(synthetic, tmp_path):
    import torch

    L.seed_everything(0, verbose=False)
    dm = synthetic(synthetic_size=2000, synthetic_median_words=30, max_length=100)
    encoder = RecurrentEncoder(vocab_size=500, embed_dim=32, hidden_size=32, cell="gru")
    model = SentimentClassifier(encoder, adversarial=0.05, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = quick_trainer(tmp_path)
    trainer.fit(model, dm)
    logged = trainer.logged_metrics
    assert logged["train/adversarial_loss_epoch"] > logged["train/loss_epoch"] > 0
    assert trainer.validate(model, dm, verbose=False)[0]["val/acc"] >= 0.90


def test_adversarial_training_needs_word_embeddings():
    from imdb_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="model.adversarial"):
        SentimentClassifier(Recurrence(input_size=1, hidden_size=4), adversarial=0.1)
    with pytest.raises(ConfigError, match="model.adversarial must be 0"):
        SentimentClassifier(RecurrentEncoder(vocab_size=10), adversarial=-1)


def test_lr_decay_gives_each_layer_below_the_head_a_smaller_rate_under_one_cycle(synthetic, tmp_path):
    import functools

    import torch

    L.seed_everything(0, verbose=False)
    encoder = RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=16, num_layers=2, bigram_buckets=64)
    schedule = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01)
    model = SentimentClassifier(encoder, scheduler=schedule, lr_decay=2.0)
    peaks = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            for index, group in enumerate(trainer.optimizers[0].param_groups):
                peaks[index] = max(peaks.get(index, 0.0), group["lr"])

    trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=6, limit_val_batches=1, callbacks=[Record()])
    trainer.fit(model, synthetic(synthetic_size=600))
    groups = trainer.optimizers[0].param_groups
    # head, layer 1, layer 0, embedding + bigram tables: every parameter in exactly one group
    assert [len(g["params"]) for g in groups] == [2, 4, 4, 2]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert [g["max_lr"] for g in groups] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    ratios = [peaks[i] / peaks[0] for i in range(4)]
    assert ratios == pytest.approx([1, 0.5, 0.25, 0.125])  # the whole schedule scaled, not only its peak


def test_gradual_unfreezing_trains_the_head_first_then_one_layer_more_each_epoch(synthetic, tmp_path):
    import torch

    dm = synthetic(synthetic_size=600)
    changed = []
    for epochs in (1, 2, 3):
        L.seed_everything(0, verbose=False)
        encoder = RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=16, cell="lstm")
        model = SentimentClassifier(encoder, gradual_unfreezing=True, adversarial=0.01)
        before = [[p.detach().clone() for p in group] for group in model.layer_groups()]
        quick_trainer(tmp_path, max_epochs=epochs, limit_train_batches=3, limit_val_batches=1).fit(model, dm)
        after = model.layer_groups()
        changed.append([any(not torch.equal(b, a) for b, a in zip(old, new)) for old, new in zip(before, after)])
    # groups: head, LSTM layer, embedding
    assert changed == [[True, False, False], [True, True, False], [True, True, True]]


class Trainable(L.Callback):
    """Which layer groups (head, LSTM layer, embedding) take a gradient at each training step: (epoch, [bool...])."""

    def __init__(self):
        self.steps = []

    def on_before_backward(self, trainer, model, loss):
        self.steps.append((trainer.current_epoch, [all(p.requires_grad for p in g) for g in model.layer_groups()]))


def _unfreezing_fit(tmp_path, synthetic, stop=None, resume=False):
    import torch

    from conftest import Killed
    from imdb_lightning.callbacks import LastCheckpoint

    L.seed_everything(0, verbose=False)
    model = SentimentClassifier(RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=16, cell="lstm"),
                                gradual_unfreezing=True, scheduler=None)
    trainable = Trainable()
    trainer = quick_trainer(tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=1, enable_checkpointing=True,
                            callbacks=[LastCheckpoint(every_n_train_steps=5), trainable, *([stop] if stop else [])])
    if stop is None:
        trainer.fit(model, synthetic(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt") if resume else None)
    else:
        with pytest.raises(Killed):
            trainer.fit(model, synthetic())
    return model, trainable.steps, torch


def test_gradual_unfreezing_holds_at_every_step_of_every_epoch_and_across_a_resume(synthetic, tmp_path):
    from conftest import Killed, Stop

    reference, steps, torch = _unfreezing_fit(tmp_path / "reference", synthetic)
    # epoch 0: the head alone; epoch 1: and the LSTM layer; epoch 2: and the embedding. At every step, not only the first.
    assert steps == [(epoch, [depth <= epoch for depth in range(3)]) for epoch in range(3) for _ in range(4)]

    # killed in the middle of epoch 1, resumed from the step checkpoint before: the same layers train from there
    _unfreezing_fit(tmp_path / "resumed", synthetic, stop=Stop("batch_end", 6, Killed))
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 5  # after the first step of epoch 1
    resumed, after, _ = _unfreezing_fit(tmp_path / "resumed", synthetic, resume=True)
    assert after == steps[5:]
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_lr_decay_below_one_is_refused():
    from imdb_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="model.lr_decay"):
        SentimentClassifier(RecurrentEncoder(vocab_size=50), lr_decay=0.5)


def test_epoch_figures_cover_every_review_of_the_epoch(synthetic, tmp_path):
    # The metrics are computed once an epoch from their accumulated states (base.log_epoch_metrics):
    # the validation figures must be those of every validation review, and each epoch starts afresh.
    import torch
    from sklearn.metrics import f1_score, roc_auc_score

    L.seed_everything(0, verbose=False)
    dm = synthetic(batch_size=16)
    model = SentimentClassifier(RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=8, cell="gru"))
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=5)
    trainer.fit(model, dm)
    assert {"train/acc", "train/f1", "train/auroc", "train/loss_epoch"} <= set(trainer.logged_metrics)
    for _ in range(2):  # twice: the second validation must not count the first one's reviews again
        logged = trainer.validate(model, dm, verbose=False)[0]
        model.eval()
        with torch.no_grad():
            batches = list(dm.val_dataloader())
            probs = torch.cat([model(b["input_ids"], b["lengths"]).sigmoid() for b in batches]).numpy()
            labels = torch.cat([b["labels"] for b in batches]).numpy()
        assert len(labels) > 16  # more than one batch
        assert logged["val/acc"] == pytest.approx(((probs >= 0.5) == labels).mean(), abs=1e-6)
        assert logged["val/f1"] == pytest.approx(f1_score(labels, probs >= 0.5), abs=1e-6)
        assert logged["val/auroc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-5)


def test_the_collapse_check_waits_for_the_second_epoch_and_names_the_side():
    from imdb_lightning.models.finetuning import FineTuningCollapsed, check_collapse

    check_collapse(1.0, epoch=0)  # one epoch of a small run may still sit on one side
    check_collapse(0.5, epoch=3)
    with pytest.raises(FineTuningCollapsed, match="after epoch 2 every validation review is predicted negative"):
        check_collapse(0.0, epoch=2)
