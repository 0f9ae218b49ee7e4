import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from imdb_lightning.data.tokenizer import PAD_ID, UNK_ID, build_tokenizer, encode, normalizer, python_normalizer

TEXTS = ["Good movie!<br /><br />Really GOOD.", "a bad movie, bad acting", "good good bad rare"]


def test_specials_have_fixed_ids():
    tok = build_tokenizer(TEXTS, vocab_size=100)
    assert tok.token_to_id("<pad>") == PAD_ID == 0
    assert tok.token_to_id("<unk>") == UNK_ID == 1


def test_lowercase_br_removed_and_punctuation_split():
    tok = build_tokenizer(TEXTS, vocab_size=100)
    tokens = tok.encode("Good movie!<br />Really", add_special_tokens=False).tokens
    assert tokens == ["good", "movie", "!", "really"]
    assert "<br" not in tok.get_vocab() and "br" not in tok.get_vocab()


def test_min_frequency_drops_rare_words_to_unk():
    tok = build_tokenizer(TEXTS, vocab_size=100, min_frequency=2)
    vocab = tok.get_vocab()
    assert {"good", "bad", "movie"} <= set(vocab)
    assert "rare" not in vocab and "acting" not in vocab
    assert tok.encode("rare", add_special_tokens=False).ids == [UNK_ID]


def test_vocab_size_caps_vocabulary_keeping_most_frequent():
    tok = build_tokenizer(TEXTS, vocab_size=4)  # <pad>, <unk> and the two most frequent words
    assert tok.get_vocab_size() == 4
    assert {"good", "bad"} <= set(tok.get_vocab())


def test_unknown_words_map_to_unk_and_encode_is_ragged():
    tok = build_tokenizer(TEXTS, vocab_size=100)
    ids, offsets = encode(tok, ["good zyxwv", "", "bad"])
    assert offsets.tolist() == [0, 2, 2, 3]
    assert ids[1] == UNK_ID
    assert ids[0] == tok.token_to_id("good") and ids[2] == tok.token_to_id("bad")


def test_lowercase_off_keeps_case():
    tok = build_tokenizer(["Good good"], vocab_size=100, lowercase=False)
    assert {"Good", "good"} <= set(tok.get_vocab())


TRICKY = [
    "Good movie!<br /><br />Really GOOD.",
    "<BR>upper-case tag<br/>no space<br   />many spaces<br\n/>newline",
    "ΣΟΦΟΣ σοφός ΌΣΟΣ İstanbul Straße ﬁne café",
    "tabs\tand\u00a0non-breaking spaces … “quotes” — dashes",
    "",
]


@pytest.mark.parametrize("lowercase", [True, False])
def test_bulk_fast_path_matches_the_tokenizers_own_normalizer(lowercase):
    tok = build_tokenizer(TRICKY + TEXTS, vocab_size=1000, lowercase=lowercase)
    assert python_normalizer(tok) is not None  # the fast path is taken
    ids, offsets = encode(tok, TRICKY)
    for i, text in enumerate(TRICKY):
        assert ids[offsets[i] : offsets[i + 1]].tolist() == tok.encode(text, add_special_tokens=False).ids
    # the vocabulary is the one the tokenizers library trains with its own normalizer
    slow = Tokenizer(models.WordLevel(unk_token="<unk>"))
    slow.normalizer, slow.pre_tokenizer = normalizer(lowercase), pre_tokenizers.Whitespace()
    slow.train_from_iterator(TRICKY + TEXTS, trainers.WordLevelTrainer(vocab_size=1000, special_tokens=["<pad>", "<unk>"]))
    assert slow.get_vocab() == tok.get_vocab()


def test_other_normalizers_take_the_general_path():
    tok = build_tokenizer(TEXTS, vocab_size=100)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    assert python_normalizer(tok) is None
    ids, offsets = encode(tok, ["ﬁne GOOD"])
    assert ids.tolist() == tok.encode("ﬁne GOOD", add_special_tokens=False).ids
