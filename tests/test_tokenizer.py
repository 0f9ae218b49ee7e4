from imdb_lightning.tokenizer import PAD_ID, UNK_ID, build_tokenizer, encode

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
