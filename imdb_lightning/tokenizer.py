"""Word-level tokenizer from the `tokenizers` library: `<pad>` = 0, `<unk>` = 1."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from .standalone import PAD_ID, UNK_ID  # noqa: F401  (0 and 1; defined where exported models read them)

PAD, UNK = "<pad>", "<unk>"


BREAKS = r"<br\s*/?>"  # IMDB's HTML line breaks
_BREAKS = re.compile(BREAKS)


def normalizer(lowercase: bool = True) -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.Replace(Regex(BREAKS), " ")] + ([normalizers.Lowercase()] if lowercase else []))


def python_normalizer(tokenizer: Tokenizer) -> Callable[[str], str] | None:
    """The tokenizer's normalizer as Python string code, when it is one `normalizer()` builds.

    Bulk work (training the vocabulary, encoding a corpus) runs the same steps in Python's C string
    code instead: 0.12 s for 25,000 reviews here, where the Rust normalizers, which track
    alignments we never read, cost seconds. The saved tokenizer keeps its own normalizer, so
    single reviews, checkpoints and exported models need no Python step.
    """
    state = tokenizer.normalizer.__getstate__() if tokenizer.normalizer is not None else None
    if state == normalizer(lowercase=False).__getstate__():
        return lambda text: _BREAKS.sub(" ", text)
    if state == normalizer(lowercase=True).__getstate__():
        # "Σ" first: str.lower() turns a word-final one into "ς", the Rust normalizer (per character) into "σ".
        return lambda text: _BREAKS.sub(" ", text).replace("Σ", "σ").lower()
    return None


def _bare(tokenizer: Tokenizer) -> Tokenizer:
    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.normalizer = None
    return bare


def build_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 1, lowercase: bool = True) -> Tokenizer:
    """Train on `texts`; `vocab_size` caps the vocabulary, specials included."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizer(lowercase)
    # Words and each run of punctuation become separate tokens: "good!" -> "good", "!".
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False
    )
    normalize = python_normalizer(tokenizer)
    bare = _bare(tokenizer)
    # Lists of reviews rather than single strings: fewer crossings into Rust, the same vocabulary
    # (4.1 s instead of 4.6 s for 45,000 reviews here).
    batches = ([normalize(t) for t in texts[start : start + 1000]] for start in range(0, len(texts), 1000))
    bare.train_from_iterator(batches, trainer=trainer, length=len(texts))
    bare.normalizer = tokenizer.normalizer
    return bare


def encode(tokenizer: Tokenizer, texts: list[str], chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token ids as one flat int32 array plus offsets: review i is ids[offsets[i]:offsets[i + 1]]."""
    normalize = python_normalizer(tokenizer)
    if normalize is not None:
        tokenizer = _bare(tokenizer)
    # encode_batch_fast skips offset tracking we do not need and runs on all cores; chunks keep the
    # Encoding objects (tokens, masks, ...) of only a few thousand reviews alive at a time.
    ids = [
        e.ids
        for start in range(0, len(texts), chunk)
        for e in tokenizer.encode_batch_fast(
            [normalize(t) for t in texts[start : start + chunk]] if normalize else texts[start : start + chunk],
            add_special_tokens=False,
        )
    ]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(i) for i in ids], out=offsets[1:])
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1])), offsets
