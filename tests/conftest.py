from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent/'shared'/'reference'

@pytest.fixture
def reference():
    "The folder of the authors' published splits and symptom sets (beside the checkout); skip when absent."
    if not REFERENCE.is_dir(): pytest.skip(f'no reference files at {REFERENCE}')
    return REFERENCE
