"The bundled pocket world: shipped synthetic sets equal their generator's output, byte for byte; the weights load."
import io
from pathlib import Path

import pytest
from PIL import Image

from vip.clip import DATA_SAMPLES, POCKET, load_clip
from vip.pocket import SYNTH_SETS, SYNTH_SYMPTOMS, _files, synth_picture, make_synth_set
from vip.symptoms import load_symptoms


@pytest.mark.parametrize('name', list(SYNTH_SETS))
def test_shipped_set_is_what_the_generator_writes(name):
    files = list(_files(name))
    shipped = sorted(p.relative_to(DATA_SAMPLES/name).as_posix() for p in (DATA_SAMPLES/name).rglob('*.png'))
    assert shipped == sorted(rel for *_, rel in files)
    for split, c, i, label, rel in files:
        buf = io.BytesIO(); Image.fromarray(synth_picture(name, split, i, label)).save(buf, format='PNG')
        assert buf.getvalue() == (DATA_SAMPLES/name/rel).read_bytes(), rel


def test_make_synth_set_never_writes_into_an_existing_folder(tmp_path):
    (tmp_path/'derm-synth').mkdir()
    (tmp_path/'derm-synth'/'mine.txt').write_text('keep')
    with pytest.raises(Exception, match='already exists'):
        make_synth_set('derm-synth', tmp_path)
    assert (tmp_path/'derm-synth'/'mine.txt').read_text() == 'keep'


def test_symptom_files_match_their_source():
    for name, spec in SYNTH_SYMPTOMS.items():
        classes = SYNTH_SETS[name]['classes']
        assert load_symptoms(DATA_SAMPLES/'symptoms'/f'{name}.json', classes=classes) == {c: [p for p, _ in v] for c, v in spec.items()}
        assert load_symptoms(DATA_SAMPLES/'symptoms'/f'{name}_medical.json', classes=classes) == {c: [m for _, m in v] for c, v in spec.items()}


def test_pocket_weights_load_and_are_small():
    f = DATA_SAMPLES/'pocket_clip.safetensors'
    assert f.stat().st_size < 20e6
    clip = load_clip(POCKET, device='cpu')
    assert (clip.image_size, clip.text_width, clip.embed_dim) == (64, 96, 128)
    assert not any(p.requires_grad for p in clip.model.parameters())
