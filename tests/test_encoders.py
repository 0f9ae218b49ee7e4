import pytest
import torch

from conftest import RECURRENT_PRESETS as ENCODERS
from imdb_lightning.errors import ConfigError
from imdb_lightning.models.encoders import NBoWEncoder, RecurrentEncoder, ScratchRNNEncoder, build_encoder, encoder_spec


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "max_mean", "last_max_mean"])
@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_and_padding_invariance(name, pooling, packed):
    torch.manual_seed(0)
    encoder = RecurrentEncoder(
        vocab_size=50, embed_dim=8, hidden_size=6, num_layers=2, pooling=pooling, packed=packed, **ENCODERS[name],
        reverse=pooling == "last_max_mean",  # a backward reader keeps its padding out too
    ).eval()
    short = torch.randint(2, 50, (1, 7))
    long = torch.randint(2, 50, (1, 40))
    alone = encoder(short, torch.tensor([7]))
    batch = torch.zeros(2, 40, dtype=torch.long)  # the short review padded next to a much longer one
    batch[0, :7], batch[1] = short[0], long[0]
    together = encoder(batch, torch.tensor([7, 40]))
    assert alone.shape == (1, encoder.output_dim) and together.shape == (2, encoder.output_dim)
    assert encoder.output_dim == 6 * (2 if encoder.bidirectional else 1) * {"max_mean": 2, "last_max_mean": 3}.get(pooling, 1)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)
    # the pad embedding stays zero and padding positions get no gradient
    together.sum().backward()
    assert encoder.embedding.weight.grad[0].abs().sum() == 0


def test_spec_round_trip_rebuilds_the_same_encoder():
    encoder = RecurrentEncoder(vocab_size=30, cell="gru", hidden_size=5, bidirectional=True, pooling="mean")
    spec = encoder_spec(encoder)
    assert spec["class_path"] == "imdb_lightning.models.encoders.RecurrentEncoder"
    rebuilt = build_encoder(spec)
    rebuilt.load_state_dict(encoder.state_dict())
    ids, lengths = torch.randint(2, 30, (3, 9)), torch.tensor([9, 4, 1])
    torch.testing.assert_close(rebuilt.eval()(ids, lengths), encoder.eval()(ids, lengths))


def same_weights(encoder, **changes):
    """The encoder rebuilt from its spec with `changes` to its init_args, holding the same weights."""
    spec = encoder_spec(encoder)
    twin = build_encoder({**spec, "init_args": {**spec["init_args"], **changes}})
    twin.load_state_dict(encoder.state_dict())
    return twin


@pytest.mark.parametrize("name", ENCODERS)
def test_packed_and_padded_give_the_same_features(name):
    torch.manual_seed(0)
    padded = RecurrentEncoder(vocab_size=40, embed_dim=8, hidden_size=5, pooling="mean", **ENCODERS[name]).eval()
    packed = same_weights(padded, packed=True)
    ids, lengths = torch.randint(2, 40, (4, 12)), torch.tensor([12, 3, 7, 1])
    torch.testing.assert_close(packed.eval()(ids, lengths), padded(ids, lengths), atol=1e-5, rtol=0)


def test_keras_init_sets_forget_bias_and_small_embeddings():
    encoder = RecurrentEncoder(vocab_size=100, cell="lstm", hidden_size=4, init="keras")
    bias = encoder.layers[0][0].bias_ih_l0
    assert bias[4:8].eq(1).all() and bias[:4].eq(0).all()
    assert encoder.embedding.weight.abs().max() <= 0.05


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(cell="transformer"), "rnn, lstm, gru"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(embed_dim=-3), "embed_dim"),
        (dict(pooling="first"), "last, mean, max, max_mean, last_max_mean"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_bad_encoder_options_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        RecurrentEncoder(**settings)


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_scratch_rnn_matches_torch_rnn_outputs_and_gradients(pooling):
    torch.manual_seed(0)
    reference = RecurrentEncoder(vocab_size=30, cell="rnn", embed_dim=6, hidden_size=5, pooling=pooling, init="torch")
    scratch = ScratchRNNEncoder(vocab_size=30, embed_dim=6, hidden_size=5, pooling=pooling)
    scratch.from_torch_rnn(reference.layers[0][0], reference.embedding)
    ids, lengths = torch.randint(2, 30, (3, 9)), torch.tensor([9, 4, 1])
    expected, got = reference(ids, lengths), scratch(ids, lengths)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    expected.sum().backward()
    got.sum().backward()
    rnn = reference.layers[0][0]
    for mine, theirs in [(scratch.W_x.weight, rnn.weight_ih_l0), (scratch.W_h.weight, rnn.weight_hh_l0),
                         (scratch.W_h.bias, rnn.bias_hh_l0), (scratch.embedding.weight, reference.embedding.weight)]:
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=0)


def test_scratch_rnn_truncated_bptt_cuts_early_gradients():
    torch.manual_seed(0)
    encoder = ScratchRNNEncoder(vocab_size=30, embed_dim=4, hidden_size=4, pooling="last", tbptt_steps=2)
    ids, lengths = torch.randint(2, 30, (2, 8)), torch.tensor([8, 5])
    embedded = []

    def keep(module, inputs, out):
        out.retain_grad()
        embedded.append(out)

    encoder.embedding.register_forward_hook(keep)
    encoder(ids, lengths).sum().backward()
    grad = embedded[0].grad.abs().sum(-1)  # (time, batch): which inputs still get a gradient
    assert grad[:6, 0].eq(0).all() and grad[6:, 0].gt(0).all()  # review 0: only its last 2 steps
    assert grad[:3, 1].eq(0).all() and grad[3:5, 1].gt(0).all()  # review 1 (length 5): steps 3 and 4


def test_scratch_rnn_spec_round_trip():
    encoder = ScratchRNNEncoder(vocab_size=20, embed_dim=3, hidden_size=4, tbptt_steps=5)
    assert build_encoder(encoder_spec(encoder)).tbptt_steps == 5


@pytest.mark.parametrize("bigrams", [0, 101])
def test_nbow_shapes_and_padding_invariance(bigrams):
    torch.manual_seed(0)
    encoder = NBoWEncoder(vocab_size=40, embed_dim=6, bigram_buckets=bigrams).eval()
    short, long = torch.randint(2, 40, (1, 5)), torch.randint(2, 40, (1, 30))
    batch = torch.zeros(2, 30, dtype=torch.long)
    batch[0, :5], batch[1] = short[0], long[0]
    together = encoder(batch, torch.tensor([5, 30]))
    assert together.shape == (2, 6) and encoder.output_dim == 6
    torch.testing.assert_close(together[0], encoder(short, torch.tensor([5]))[0], atol=1e-6, rtol=0)
    single = encoder(torch.tensor([[7]]), torch.tensor([1]))  # one token: no bigram, still defined
    assert torch.isfinite(single).all()


@pytest.mark.parametrize("name", ENCODERS)
def test_recurrent_bigram_bag_sits_beside_the_states_and_ignores_padding(name):
    torch.manual_seed(0)
    plain = RecurrentEncoder(vocab_size=40, embed_dim=6, hidden_size=5, pooling="max", **ENCODERS[name]).eval()
    spec = encoder_spec(plain)
    bagged = build_encoder({**spec, "init_args": {**spec["init_args"], "bigram_buckets": 101}}).eval()
    bagged.load_state_dict({**plain.state_dict(), "bigrams.weight": bagged.bigrams.weight}, strict=True)
    assert bagged.output_dim == plain.output_dim + 6
    short, long = torch.randint(2, 40, (1, 5)), torch.randint(2, 40, (1, 30))
    batch = torch.zeros(2, 30, dtype=torch.long)
    batch[0, :5], batch[1] = short[0], long[0]
    together = bagged(batch, torch.tensor([5, 30]))
    torch.testing.assert_close(together[0], bagged(short, torch.tensor([5]))[0], atol=1e-5, rtol=0)
    # the recurrent features are unchanged; the rest is the mean of the review's 4 pair embeddings
    torch.testing.assert_close(together[:, : plain.output_dim], plain(batch, torch.tensor([5, 30])))
    pairs = (short[0, :-1] * 1_000_003 + short[0, 1:]) % 101
    torch.testing.assert_close(together[0, plain.output_dim :], bagged.bigrams.weight[pairs].mean(0))
    with pytest.raises(ConfigError, match="bigram_buckets"):
        RecurrentEncoder(bigram_buckets=-1)


@pytest.mark.parametrize("name", ENCODERS)
def test_recurrent_word_bag_is_the_mean_word_embedding_beside_the_states(name):
    torch.manual_seed(0)
    plain = RecurrentEncoder(vocab_size=40, embed_dim=6, hidden_size=5, pooling="max_mean", **ENCODERS[name]).eval()
    spec = encoder_spec(plain)
    bagged = build_encoder({**spec, "init_args": {**spec["init_args"], "word_bag": True}}).eval()
    bagged.load_state_dict(plain.state_dict(), strict=True)  # no weights of its own
    assert bagged.output_dim == plain.output_dim + 6
    short, long = torch.randint(2, 40, (1, 5)), torch.randint(2, 40, (1, 30))
    batch = torch.zeros(2, 30, dtype=torch.long)
    batch[0, :5], batch[1] = short[0], long[0]
    together = bagged(batch, torch.tensor([5, 30]))  # (batch, output_dim)
    torch.testing.assert_close(together[0], bagged(short, torch.tensor([5]))[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together[:, : plain.output_dim], plain(batch, torch.tensor([5, 30])))
    # the mean over the 5 real words only: padding embeds to zeros and must not dilute it
    torch.testing.assert_close(together[0, plain.output_dim :], bagged.embedding.weight[short[0]].mean(0))
    assert build_encoder(encoder_spec(bagged)).word_bag is True


def test_word_dropout_turns_words_into_unk_while_training_only():
    torch.manual_seed(0)
    encoder = RecurrentEncoder(vocab_size=50, embed_dim=4, hidden_size=3, cell="gru", word_dropout=0.25)
    seen = []
    encoder.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].t()))  # (batch, time)
    ids = torch.randint(2, 50, (8, 200))
    ids[:, 150:] = 0  # padding
    lengths = torch.full((8,), 150)
    encoder.train()(ids, lengths)
    dropped = seen[-1] != ids
    assert seen[-1][dropped].eq(1).all() and not dropped[:, 150:].any()  # to <unk>, never padding
    assert 0.2 < dropped[:, :150].float().mean() < 0.3
    encoder.eval()(ids, lengths)
    assert torch.equal(seen[-1], ids)
    with pytest.raises(ConfigError, match="word_dropout"):
        RecurrentEncoder(word_dropout=1.0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_drop_masks_the_recurrent_weights_while_training_only(cell):
    torch.manual_seed(0)
    dropping = RecurrentEncoder(vocab_size=50, embed_dim=8, hidden_size=6, cell=cell, pooling="max_mean", weight_drop=0.5)
    plain = RecurrentEncoder(vocab_size=50, embed_dim=8, hidden_size=6, cell=cell, pooling="max_mean")
    plain.load_state_dict(dropping.state_dict())
    ids, lengths = torch.randint(2, 50, (3, 11)), torch.tensor([11, 6, 2])
    torch.testing.assert_close(dropping.eval()(ids, lengths), plain.eval()(ids, lengths))
    # while training: the plain encoder run with one dropped-out copy of its recurrent weights
    torch.manual_seed(1)
    out = dropping.train()(ids, lengths)
    torch.manual_seed(1)
    recurrent = dropping.layers[0][0].weight_hh_l0
    dropped = torch.nn.functional.dropout(recurrent.detach(), 0.5)
    with torch.no_grad():
        plain.layers[0][0].weight_hh_l0.copy_(dropped)
    torch.testing.assert_close(out, plain.eval()(ids, lengths))
    # dropped weights get no gradient, and the weights themselves are left as they were
    out.sum().backward()
    assert recurrent.grad[dropped == 0].eq(0).all() and recurrent.grad[dropped != 0].ne(0).any()
    assert not torch.equal(recurrent.detach(), dropped)
    with pytest.raises(ConfigError, match="weight_drop"):
        RecurrentEncoder(weight_drop=1.0)


def test_reversal_within_length_is_its_own_inverse_and_its_gradient_is_exact():
    from imdb_lightning.models.encoders import reverse_within_length

    torch.manual_seed(0)
    lengths = torch.tensor([5, 2, 7])
    x = torch.randn(7, 3, 4, dtype=torch.double, requires_grad=True)  # (time, batch, features)
    y = reverse_within_length(x, lengths)
    assert torch.equal(y[:5, 0], x[:5, 0].flip(0)) and torch.equal(y[2:, 1], x[2:, 1])  # padding stays put
    torch.testing.assert_close(reverse_within_length(y, lengths), x)
    assert torch.autograd.gradcheck(lambda t: reverse_within_length(t, lengths), (x,))


@pytest.mark.parametrize("name", ENCODERS)
def test_a_reversed_encoder_reads_each_review_last_word_first(name):
    torch.manual_seed(0)
    forward = RecurrentEncoder(vocab_size=40, embed_dim=8, hidden_size=5, pooling="last_max_mean", **ENCODERS[name]).eval()
    backward = same_weights(forward, reverse=True)
    ids, lengths = torch.randint(2, 40, (3, 9)), torch.tensor([9, 4, 1])
    ids[1, 4:] = ids[2, 1:] = 0  # padding
    flipped = ids.clone()
    for row, n in enumerate(lengths.tolist()):
        flipped[row, :n] = ids[row, :n].flip(0)
    torch.testing.assert_close(backward.eval()(ids, lengths), forward(flipped, lengths), atol=1e-6, rtol=0)
    if not forward.bidirectional:  # one way, the last-token features differ with the reading direction
        assert not torch.allclose(backward(ids[:1], lengths[:1]), forward(ids[:1], lengths[:1]))


def test_variational_dropout_keeps_one_mask_over_time():
    from imdb_lightning.models.encoders import LockedDropout

    drop = LockedDropout(0.5).train()
    out = drop(torch.ones(30, 4, 16))  # (time, batch, dim)
    assert torch.equal(out, out[:1].expand_as(out))  # the same mask at every step
    assert set(out.unique().tolist()) <= {0.0, 2.0} and 0 < out[0].eq(0).float().mean() < 1
    assert not torch.equal(out[:, 0], out[:, 1])  # but its own for each review
    assert torch.equal(drop.eval()(out), out)
    encoder = RecurrentEncoder(vocab_size=40, embed_dim=8, hidden_size=5, num_layers=2, embed_dropout=0.3, dropout=0.3,
                               variational=True)
    assert isinstance(encoder.embedding_dropout, LockedDropout) and isinstance(encoder.layer_dropout, LockedDropout)
    ids, lengths = torch.randint(2, 40, (3, 9)), torch.tensor([9, 4, 1])
    assert encoder.train()(ids, lengths).shape == (3, encoder.output_dim)
