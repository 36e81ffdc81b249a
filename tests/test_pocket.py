"The bundled pocket world: shipped synthetic sets equal their generator's output (pixels within rounding, attributes exactly); the weights load."
import io, json, shutil, warnings
from pathlib import Path

import pytest
from PIL import Image

from vip.clip import DATA_SAMPLES, POCKET, load_clip
from vip.synth import (SYNTH_COLUMNS, SYNTH_SETS, SYNTH_SYMPTOM_ATTRIBUTES, SYNTH_SYMPTOMS, compare_synth_attributes,
                       compare_synth_set, load_symptom_attributes, make_synth_set, read_synth_attributes, symptom_present,
                       synth_attributes, synth_files, synth_picture, write_synth_attributes)
from vip.cli import data_main
from vip.core import VipError
from vip.data import load_splits, save_split
from vip.symptoms import classes_from_folder, load_symptoms


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


SPLITS = ('train', 'val', 'test')


@pytest.mark.parametrize('name', list(SYNTH_SETS))
def test_shipped_attributes_are_what_the_generator_draws(name):
    d = compare_synth_attributes(name)
    assert d == dict(files=3, rows=sum(sum(k) for k in SYNTH_SETS[name]['sizes'].values()), lines_off=0, first_off=None)
    for s in SPLITS:
        rows = read_synth_attributes(name, s)
        assert rows == synth_attributes(name, s) and list(rows[0]) == SYNTH_COLUMNS[name]
        assert [r['file'] for r in rows] == [Path(rel).name for sp, *_, rel in synth_files(name) if sp == s]


def test_attributes_follow_the_classes_drawn():
    rows = [r for s in SPLITS for r in synth_attributes('derm-synth', s)]
    share = lambda key, value, c: sum(r[key] == value for r in rows if r['drawn'] == c) / sum(r['drawn'] == c for r in rows)
    assert share('shape', 'lopsided', 'melanoma') > 0.9 and share('shape', 'lopsided', 'nevus') < 0.1
    assert all(r['n_colours'] == str(len(r['colours'].split(';'))) for r in rows)
    assert 0.05 < sum(r['label'] != r['drawn'] for r in rows) / len(rows) < 0.11      # the wrong-on-purpose labels
    cxr = [r for s in SPLITS for r in synth_attributes('cxr-synth', s)]
    assert all(r['clear'] == str(r['patch'] == r['faint'] == 'False' and r['base'] == 'none') for r in cxr)
    assert not any(r['faint'] == 'True' for r in cxr if r['drawn'] == 'pneumonia')


def test_derm5_classes_lean_their_own_way():
    rows = [r for s in SPLITS for r in synth_attributes('derm5-synth', s)]
    assert len(rows) == 500 and {r['label'] for r in rows} == set(SYNTH_SETS['derm5-synth']['classes'])
    share = lambda key, values, c: sum(r[key] in values for r in rows if r['drawn'] == c) / sum(r['drawn'] == c for r in rows)
    assert share('palette', ['pink'], 'basal cell carcinoma') == 1 and share('redness', ['True'], 'basal cell carcinoma') > 0.6
    assert share('palette', ['brown-mix'], 'seborrheic keratosis') > 0.75 and share('dots', ['True'], 'seborrheic keratosis') > 0.75
    assert share('palette', ['odd'], 'miscellaneous') > 0.5 and share('palette', ['odd'], 'melanoma') == 0
    # the look-alike pair: keratosis-like spots share the melanoma-like dots and jagged edges, not the mixed palette
    assert share('dots', ['True'], 'melanoma') > 0.7 and share('palette', ['mixed'], 'seborrheic keratosis') == 0
    wrong = [r for r in rows if r['label'] != r['drawn']]
    assert 0.05 < len(wrong) / len(rows) < 0.12 and len({r['drawn'] for r in wrong}) == 5   # wrong labels, any class
    assert all(r['palette'] == 'brown' for r in rows if r['colours'] in ('tan', 'brown', 'black'))


def test_compare_synth_attributes_sees_a_changed_or_missing_value(tmp_path):
    shutil.copytree(DATA_SAMPLES/'derm-synth'/'attributes', tmp_path/'derm-synth'/'attributes')
    f = tmp_path/'derm-synth'/'attributes'/'test.csv'
    lines = f.read_text().split('\n')
    lines[7] = lines[7].replace(',True,', ',False,', 1) if ',True,' in lines[7] else lines[7].replace(',False,', ',True,', 1)
    f.write_text('\n'.join(lines))
    d = compare_synth_attributes('derm-synth', tmp_path)
    assert d['lines_off'] == 1 and d['first_off'].startswith('test.csv line 8:'), d
    f.write_bytes(f.read_bytes().replace(b'\n', b'\r\n'))                          # same values, other line ends
    assert compare_synth_attributes('derm-synth', tmp_path)['lines_off'] == 401
    f.unlink()
    with pytest.raises(VipError, match='is missing'): compare_synth_attributes('derm-synth', tmp_path)


def test_write_synth_attributes_never_replaces_a_different_file(tmp_path):
    with pytest.raises(VipError, match='not found'): write_synth_attributes('cxr-synth', tmp_path)
    (tmp_path/'cxr-synth').mkdir()
    paths = write_synth_attributes('cxr-synth', tmp_path)
    assert [p.read_bytes() for p in paths] == [(DATA_SAMPLES/'cxr-synth'/'attributes'/p.name).read_bytes() for p in paths]
    assert write_synth_attributes('cxr-synth', tmp_path) == paths                  # the same text: left alone
    paths[0].write_text('mine\n'); paths[2].unlink()
    with pytest.raises(VipError, match='already exists and differs') as e: write_synth_attributes('cxr-synth', tmp_path)
    assert '\n' not in str(e.value)
    assert paths[0].read_text() == 'mine\n' and not paths[2].exists()             # nothing written


def test_make_synth_set_writes_the_attributes(tmp_path):
    make_synth_set('cxr-synth', tmp_path)
    assert compare_synth_attributes('cxr-synth', tmp_path)['lines_off'] == 0
    assert compare_synth_set('cxr-synth', tmp_path, step=50)['max_off'] == 0


@pytest.mark.parametrize('name', list(SYNTH_SETS))
def test_attributes_folder_is_no_split_and_no_class(name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ds = load_splits(DATA_SAMPLES/name, check=True)
    sizes = [sum(SYNTH_SETS[name]['sizes'][s]) for s in SPLITS]
    assert ds['train'].classes == SYNTH_SETS[name]['classes'] and [len(d) for d in ds.values()] == sizes
    assert classes_from_folder(DATA_SAMPLES/name) == sorted(SYNTH_SETS[name]['classes'])
    save_split(tmp_path/'split.json', ds)
    assert data_main(['check', str(DATA_SAMPLES/name), '--split', str(tmp_path/'split.json')]) == 0


@pytest.mark.parametrize('name', list(SYNTH_SETS))
def test_symptom_attribute_files_cover_every_symptom(name):
    data = load_symptom_attributes(DATA_SAMPLES/'symptoms'/f'{name}_attributes.json')
    assert data['symptoms'] == SYNTH_SYMPTOM_ATTRIBUTES[name]
    assert data['meta'] | {'source': ''} == dict(format='vip-symptom-attributes', format_version=1, symptoms=f'{name}.json',
                                                 annotations='attributes/{split}.csv', key='file', source='')
    symptoms = load_symptoms(DATA_SAMPLES/'symptoms'/data['meta']['symptoms'], classes=SYNTH_SETS[name]['classes'])
    assert {c: list(v) for c, v in data['symptoms'].items()} == symptoms
    rows = [r for s in SPLITS for r in read_synth_attributes(name, s)]
    for c, entries in data['symptoms'].items():
        for text, e in entries.items():
            for cond in e.get('any', [] if e.get('always') else [e]):
                assert set(cond['present']) <= {r[cond['column']] for r in rows}, text
            assert e.get('always') or isinstance(e.get('opposite'), str) and e['opposite']
            shown = [symptom_present(e, r) for r in rows]
            assert any(shown) and (e.get('always') or not all(shown)), text   # each symptom tells pictures apart


def test_pocket_weights_load_and_are_small():
    f = DATA_SAMPLES/'pocket_clip.safetensors'
    assert f.stat().st_size < 20e6
    clip = load_clip(POCKET, device='cpu')
    assert (clip.image_size, clip.text_width, clip.embed_dim) == (64, 96, 128)
    assert not any(p.requires_grad for p in clip.model.parameters())
