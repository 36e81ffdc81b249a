"The bundled pocket world: shipped synthetic sets equal their generator's output (pixels, within rounding); the weights load."
import io, shutil
from pathlib import Path

import pytest
from PIL import Image

from vip.clip import DATA_SAMPLES, POCKET, load_clip
from vip.pocket import SYNTH_SETS, SYNTH_SYMPTOMS, compare_synth_set, synth_files, synth_picture, make_synth_set
from vip.symptoms import load_symptoms


@pytest.mark.parametrize('name', list(SYNTH_SETS))
def test_shipped_set_is_what_the_generator_writes(name):
    files = list(synth_files(name))
    shipped = sorted(p.relative_to(DATA_SAMPLES/name).as_posix() for p in (DATA_SAMPLES/name).rglob('*.png'))
    assert shipped == sorted(rel for *_, rel in files)
    d = compare_synth_set(name)              # every picture; numpy builds may round a value at .5 the other way
    assert d['files'] == len(files) and d['max_off'] <= 1 and d['values_off'] <= d['values'] // 10_000, d


def test_compare_synth_set_sees_a_changed_or_missing_picture(tmp_path):
    shutil.copytree(DATA_SAMPLES/'cxr-synth', tmp_path/'cxr-synth')
    split, c, i, label, rel = list(synth_files('cxr-synth'))[5]
    pic = synth_picture('cxr-synth', split, i, label)
    pic[10, 10] = 255 - pic[10, 10]
    Image.fromarray(pic).save(tmp_path/'cxr-synth'/rel)
    d = compare_synth_set('cxr-synth', tmp_path, step=5)
    assert d['files'] == 200 and d['max_off'] > 1 and 1 <= d['values_off'] <= 3
    (tmp_path/'cxr-synth'/rel).unlink()
    with pytest.raises(Exception, match='is missing'): compare_synth_set('cxr-synth', tmp_path, step=5)


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
