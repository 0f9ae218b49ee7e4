"""A deterministic, offline review corpus whose labels depend on word order.

Every review hides one verdict sentence ("the plot was not good .") among neutral
filler. The label is the adjective's polarity, flipped by a "not" right before it.
Filler sentences use "not" too, so a bag of words cannot tell "not good" from
"good ... not": only a model that reads the order can.
"""

from __future__ import annotations

import numpy as np

POSITIVE = ["good", "great", "excellent", "wonderful", "brilliant", "superb", "enjoyable", "fantastic"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "weak"]
SUBJECTS = ["the acting", "the plot", "the movie", "the film", "the script", "the music", "the cast", "the ending"]
FILLER = [
    "i watched it on a {day} with my {who} .",
    "it runs about {n} minutes and was filmed in {place} .",
    "i did not know the director before this one .",
    "my {who} had not seen the trailer .",
    "the {thing} appears in the second half .",
    "we bought tickets for the {day} show in {place} .",
    "there is a scene with a {thing} near the river .",
    "it was not released in {place} until later .",
]
SLOTS = {
    "day": ["monday", "friday", "sunday", "holiday", "rainy evening"],
    "who": ["sister", "brother", "friends", "parents", "roommate"],
    "place": ["paris", "texas", "london", "tokyo", "a small town"],
    "thing": ["car", "dog", "train", "letter", "storm"],
}


def _fill(template: str, rng: np.random.Generator) -> str:
    slots = {k: v[rng.integers(len(v))] for k, v in SLOTS.items()}
    return template.format(n=int(rng.integers(80, 180)), **slots)


def synthetic_reviews(n: int, seed: int = 0, median_words: int = 60) -> tuple[list[str], list[int]]:
    """`n` reviews with balanced labels; lengths are log-normal around `median_words`
    (use 175 for IMDB's length profile: median ~175 words, a tail past 1,000)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        negated = bool(rng.integers(2))
        positive_word = label != negated  # "not bad" is positive, "not good" negative
        adjective = rng.choice(POSITIVE if positive_word else NEGATIVE)
        verdict = f"{rng.choice(SUBJECTS)} was {'not ' if negated else ''}{adjective} ."
        words = max(10, int(rng.lognormal(np.log(median_words), 0.7)))
        sentences = [_fill(FILLER[rng.integers(len(FILLER))], rng) for _ in range(max(1, words // 9))]
        sentences.insert(int(rng.integers(len(sentences) + 1)), verdict)
        texts.append(" ".join(sentences).capitalize())
        labels.append(label)
    order = rng.permutation(n)
    return [texts[i] for i in order], [labels[i] for i in order]
