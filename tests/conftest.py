import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One tokenization cache for the whole session, away from the user's ~/.cache."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def synthetic(cache_dir):
    """A small synthetic IMDBDataModule factory; keyword arguments override its settings."""
    from imdb_lightning.data import IMDBDataModule

    def make(**overrides):
        settings = dict(source="synthetic", synthetic_size=600, vocab_size=500, max_length=120, batch_size=32)
        return IMDBDataModule(cache_dir=cache_dir, **{**settings, **overrides})

    return make


from imdb_lightning.encoders import PRESETS as ENCODERS  # noqa: E402  every encoder, parametrized over
