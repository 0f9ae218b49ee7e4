"""Word-level tokenizer from the `tokenizers` library: `<pad>` = 0, `<unk>` = 1."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from ..errors import DataError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1  # serve/runtime.py, copied beside exported models, repeats them (a test checks)


BREAKS = r"<br\s*/?>"  # IMDB's HTML line breaks
_BREAKS = re.compile(BREAKS)


def normalizer(lowercase: bool = True) -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.Replace(Regex(BREAKS), " ")] + ([normalizers.Lowercase()] if lowercase else []))


def python_normalize(lowercase: bool = True) -> Callable[[str], str]:
    """`normalizer(lowercase)` as Python string code: the same text out, much faster for a corpus."""
    if not lowercase:
        return lambda text: _BREAKS.sub(" ", text)
    # "Σ" first: str.lower() turns a word-final one into "ς", the Rust normalizer (per character) into "σ".
    return lambda text: _BREAKS.sub(" ", text).replace("Σ", "σ").lower()


def python_normalizer(tokenizer: Tokenizer) -> Callable[[str], str] | None:
    """The tokenizer's normalizer as Python string code, when it is one `normalizer()` builds.

    Bulk work (training the vocabulary, encoding a corpus) runs the same steps in Python's C string
    code instead: 0.12 s for 25,000 reviews here, where the Rust normalizers, which track
    alignments we never read, cost seconds. The saved tokenizer keeps its own normalizer, so
    single reviews, checkpoints and exported models need no Python step.
    """
    state = tokenizer.normalizer.__getstate__() if tokenizer.normalizer is not None else None
    for lowercase in (False, True):
        if state == normalizer(lowercase).__getstate__():
            return python_normalize(lowercase)
    return None


def check_words(texts: list[str]) -> None:
    """Training reviews that hold no token once the HTML line breaks are dropped (`<br /><br />`) teach
    nothing: all of them is an error, one in ten or more a warning (each reads as one unknown word)."""
    wordless = sum(1 for text in texts if not _BREAKS.sub(" ", text).strip())
    if wordless == len(texts):
        raise DataError(f"all {len(texts)} training reviews are empty once HTML line breaks (<br />) are dropped: there "
                        "is nothing to learn from; check the text column")
    if wordless * 10 >= len(texts):
        print(f"imdb-lightning: warning: {wordless} of the {len(texts)} training reviews hold no words once HTML line "
              f"breaks (<br />) are dropped ({100 * wordless / len(texts):.0f}%); each reads as one unknown word",
              file=sys.stderr)


def build_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 1, lowercase: bool = True) -> Tokenizer:
    """Train on `texts`; `vocab_size` caps the vocabulary, specials included."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    # Words and each run of punctuation become separate tokens: "good!" -> "good", "!".
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False
    )
    # Trained on texts normalized in Python (see python_normalizer), the normalizer attached after.
    # Lists of reviews rather than single strings: fewer crossings into Rust, the same vocabulary
    # (4.1 s instead of 4.6 s for 45,000 reviews here).
    normalize = python_normalize(lowercase)
    batches = ([normalize(t) for t in texts[start : start + 1000]] for start in range(0, len(texts), 1000))
    tokenizer.train_from_iterator(batches, trainer=trainer, length=len(texts))
    tokenizer.normalizer = normalizer(lowercase)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str], chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token ids as one flat int32 array plus offsets: review i is ids[offsets[i]:offsets[i + 1]]."""
    normalize = python_normalizer(tokenizer)
    if normalize is not None:  # the same steps in Python, then a copy of the tokenizer without them
        texts = [normalize(t) for t in texts]
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.normalizer = None
    # encode_batch_fast skips offset tracking we do not need and runs on all cores; chunks keep the
    # Encoding objects (tokens, masks, ...) of only a few thousand reviews alive at a time.
    ids = [
        e.ids
        for start in range(0, len(texts), chunk)
        for e in tokenizer.encode_batch_fast(texts[start : start + chunk], add_special_tokens=False)
    ]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(i) for i in ids], out=offsets[1:])
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1])), offsets
