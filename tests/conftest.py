from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent/'shared'/'reference'

@pytest.fixture
def reference():
    "The folder of the authors' published splits and symptom sets (beside the checkout); skip when absent."
    if not REFERENCE.is_dir(): pytest.skip(f'no reference files at {REFERENCE}')
    return REFERENCE


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path_factory, monkeypatch):
    "Feature caches (and anything else under XDG_CACHE_HOME) go to a folder of this test session, not the user's."
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.getbasetemp()/'cache-home'))


@pytest.fixture(autouse=True)
def no_openai_env(monkeypatch):
    "No test sees the developer's real key or server."
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    monkeypatch.delenv('OPENAI_BASE_URL', raising=False)
