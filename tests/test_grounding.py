"End-to-end tests of explanations scored against annotations: run folders from vip_train and vip_eval, a Derm7pt stand-in, the shipped mappings."
import contextlib, csv, io, json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vip.cli import eval_main, train_main
from vip.clip import DATA_SAMPLES, TINY, load_clip
from vip.core import VipError
from vip.data import load_splits
from vip.datasets import CHECKLIST, prepare_derm7pt, write_split
from vip.grounding import (grounding_scores, load_annotations, load_attribute_map, match_annotations, presence,
                           score_explanations)
from vip.explain import symptom_labels
from vip.model import ViP
from vip.symptoms import load_symptoms

SYMPTOMS = {'melanoma': ['the spot is dark', 'small dark dots inside the spot'],
            'nevus': ['the spot is light brown', 'redness around the spot']}
MAPPING = {'meta': {'format': 'vip-symptom-attributes', 'format_version': 1, 'symptoms': 'toy.json',
                    'annotations': 'attributes/{split}.csv', 'key': 'file', 'source': 'a test'},
           'symptoms': {'melanoma': {'the spot is dark': {'column': 'dark', 'present': ['True']},
                                     'small dark dots inside the spot': {'column': 'dots', 'present': ['True']}},
                        'nevus': {'the spot is light brown': {'column': 'dark', 'present': ['False']}}}}


def _toy(root: Path, n=4, size=32) -> Path:
    "Dark and light noisy squares in class folders, a table of what each test image shows, a symptom file and its mapping."
    rng, rows = np.random.default_rng(0), []
    for split in ('train', 'val', 'test'):
        for c, level in (('melanoma', 70), ('nevus', 170)):
            d = root/split/c; d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                name = f'{split}-{c}-{i}.png'
                Image.fromarray(np.clip(level + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)).save(d/name)
                if split == 'test': rows.append([name, c, str(c == 'melanoma'), str(i % 2 == 0)])
    (root/'attributes').mkdir()
    with open(root/'attributes'/'test.csv', 'w', newline='') as f: csv.writer(f).writerows([['file', 'label', 'dark', 'dots']] + rows)
    (root/'toy.json').write_text(json.dumps(SYMPTOMS))
    (root/'toy_attributes.json').write_text(json.dumps(MAPPING))
    return root


def _train(toy: Path, out: Path, name: str, *extra, symptoms=None):
    argv = ['--data', str(toy), '--symptoms', str(symptoms or toy/'toy.json'), '--backbone', TINY, '--epochs', '2',
            '--lr', '0.05', '--batch_size', '4', '--augment', 'false', '--workers', '0', '--device', 'cpu',
            '--feature_cache', 'none', '--out', str(out), '--name', name, '--quiet', *extra]
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se): code = train_main(argv)
    return code, so.getvalue(), se.getvalue().strip()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A toy set and two runs of it that differ only in --attributes (auto, none)."
    root = tmp_path_factory.mktemp('grounding')
    toy = _toy(root/'toy')
    auto, off = _train(toy, root/'runs', 'auto'), _train(toy, root/'runs', 'off', '--attributes', 'none')
    return toy, root/'runs', auto, off


def test_vip_train_writes_grounding_and_leaves_metrics_alone(runs):
    toy, out, (code, stdout, err), (code2, stdout2, _) = runs
    assert code == 0 and code2 == 0, err
    line = [l for l in stdout.splitlines() if l.startswith('explanations against')]
    assert len(line) == 1 and 'precision@1 ViP' in line[0] and 'zero-shot' in line[0]
    assert 'explanations against' not in stdout2                                        # none: no line, no file
    assert not (out/'off'/'explanations_grounded.json').exists()
    assert (out/'auto'/'metrics.json').read_bytes() == (out/'off'/'metrics.json').read_bytes()
    g = json.loads((out/'auto'/'explanations_grounded.json').read_text())
    assert (out/'auto'/'explanations_grounded.png').is_file()
    assert g['images'] == 8 and set(g['methods']) == {'vip', 'zeroshot_symptoms'}
    for m in g['methods'].values():
        p = m['precision_at_1']['predicted']
        assert p['present'] + p['absent'] + p['unmapped'] == 8
        dark, dots, light, redness = m['symptoms']
        assert (dark['present'], dark['absent'], dark['unknown']) == (4, 4, 0)
        assert (dots['present'], dots['absent']) == (4, 4)
        assert redness['auc'] is None and m['unmapped'] == [['nevus', 'redness around the spot']]
        assert all(0 <= r['auc'] <= 1 for r in (dark, dots, light))
    # the ViP accuracy that the file saw is the one metrics.json reports
    metrics = json.loads((out/'auto'/'metrics.json').read_text())['methods']
    for m in ('vip', 'zeroshot_symptoms'): assert abs(g['methods'][m]['accuracy'] - metrics[m]['accuracy']) < 1e-9


def test_vip_eval_writes_its_own_file(runs):
    toy, out, *_ = runs
    before = (out/'auto'/'explanations_grounded.json').read_bytes()
    so = io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(io.StringIO()): assert eval_main([str(out/'auto')]) == 0
    assert 'explanations against test.csv' in so.getvalue()
    assert (out/'auto'/'explanations_grounded-toy-test.json').is_file()
    assert (out/'auto'/'explanations_grounded.json').read_bytes() == before
    new = json.loads((out/'auto'/'explanations_grounded-toy-test.json').read_text())
    assert new['methods'] == json.loads(before)['methods']                      # same checkpoint, same images
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert eval_main([str(out/'auto'), '--attributes', 'none']) == 0
    assert not (out/'auto'/'explanations_grounded-toy-test-1.json').exists()


def test_bad_mapping_stops_before_any_work(runs, tmp_path):
    toy, *_ = runs
    code, _, err = _train(toy, tmp_path/'runs', 'x', '--attributes', str(tmp_path/'nope.json'))
    assert code == 2 and len(err.splitlines()) == 1 and 'not found' in err
    bad = json.loads(json.dumps(MAPPING)); bad['symptoms']['melanoma']['the spot is dark']['column'] = 'darkness'
    (tmp_path/'bad.json').write_text(json.dumps(bad))
    code, _, err = _train(toy, tmp_path/'runs', 'x', '--attributes', str(tmp_path/'bad.json'))
    assert code == 2 and "reads column 'darkness'" in err and len(err.splitlines()) == 1
    other = json.loads(json.dumps(MAPPING)); other['meta']['annotations'] = 'tables/{split}.csv'
    (tmp_path/'other.json').write_text(json.dumps(other))
    code, _, err = _train(toy, tmp_path/'runs', 'x', '--attributes', str(tmp_path/'other.json'))
    assert code == 2 and 'tables/test.csv' in err
    assert not (tmp_path/'runs'/'x').exists()                                    # nothing was made


def test_join_counts_missing_and_duplicated_names():
    rows = [{'file': 'a.png'}, {'file': 'b.png'}, {'file': 'x/b.png'}]
    with pytest.raises(VipError, match=r'2 of 4 images have no row .*; 1 images match several rows'):
        match_annotations(rows, [Path('a.png'), Path('c.png'), Path('d.png'), Path('b.png')], 'file')
    with pytest.raises(VipError, match='1 images match several rows'):
        match_annotations(rows, [Path('y/b.png')], 'file')
    assert match_annotations(rows, [Path('r/x/b.png')], 'file') == [{'file': 'x/b.png'}]


def _derm7pt(root: Path) -> Path:
    "A stand-in Derm7pt release: meta.csv with the release's columns, index files and a tiny image tree."
    rel = root/'release_v0'
    cases = [('NEL/Nel001.jpg', 'melanoma', 'atypical', 'irregular', 'diffuse irregular', 'blue areas', 'irregular', 'present'),
             ('NEL/Nel002.jpg', 'melanoma', 'typical', 'absent', 'absent', 'absent', 'regular', 'absent'),
             ('Fgl/Fgl003.jpg', 'clark nevus', 'typical', 'absent', 'diffuse regular', 'absent', 'regular', 'absent'),
             ('Fgl/Fgl004.jpg', 'blue nevus', 'absent', 'regular', 'absent', 'absent', 'absent', 'present')] * 3
    (rel/'meta').mkdir(parents=True)
    header = ['case_num', 'diagnosis', 'seven_point_score', 'pigment_network', 'streaks', 'pigmentation',
              'regression_structures', 'dots_and_globules', 'blue_whitish_veil', 'vascular_structures', 'derm', 'clinic']
    with open(rel/'meta'/'meta.csv', 'w', newline='') as f:
        w = csv.writer(f); w.writerow(header)
        for i, (d, diag, *items) in enumerate(cases):
            d = d.replace('.jpg', f'-{i}.jpg')
            w.writerow([i + 1, diag, 0, *items, 'absent', d, d.replace('.jpg', 'c.jpg')])
            p = rel/'images'/d; p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
    for name, idx in (('train', [0, 1, 2, 3]), ('valid', [4, 5, 6, 7]), ('test', [8, 9, 10, 11])):
        (rel/'meta'/f'{name}_indexes.csv').write_text('indexes\n' + '\n'.join(map(str, idx)) + '\n')
    return rel


def test_derm7pt_attributes_on_a_stand_in(tmp_path):
    rel = _derm7pt(tmp_path/'download')
    write_split(prepare_derm7pt(tmp_path/'download'), tmp_path/'split.json')
    code, stdout, err = _train(tmp_path/'download', tmp_path/'runs', 'd7', '--split_file', str(tmp_path/'split.json'),
                               '--attributes', str(DATA_SAMPLES/'symptoms'/'derm7pt_attributes.json'),
                               symptoms=DATA_SAMPLES/'symptoms'/'derm7pt.json')
    assert code == 0, err
    assert 'explanations against meta.csv (4 images)' in stdout
    g = json.loads((tmp_path/'runs'/'d7'/'explanations_grounded.json').read_text())
    vip = g['methods']['vip']
    assert g['key'] == 'derm' and vip['unmapped'] == [] and len(vip['symptoms']) == 8
    # the test cases repeat the four of _derm7pt: irregular structures (asymmetry) only in the first melanoma
    asym = vip['symptoms'][0]
    assert asym['symptom'].startswith('The two halves') and (asym['present'], asym['absent']) == (1, 3)
    net = vip['symptoms'][7]                                         # typical pigment network: the second and third
    assert net['symptom'].startswith('A fine, regular net') and (net['present'], net['absent']) == (2, 2)
    assert 'derm7pt_attributes.json' in g['attributes'] and g['annotations'].endswith('meta.csv')


def test_derm7pt_attributes_uses_the_release_names():
    amap = load_attribute_map(DATA_SAMPLES/'symptoms'/'derm7pt_attributes.json', DATA_SAMPLES/'symptoms'/'derm7pt.json')
    assert len(amap.entries) == 8 and set(amap.columns()) <= set(CHECKLIST)
    assert all(e.get('note') for e in amap.entries.values())                      # every entry says how close it is
    assert (amap.meta['annotations'], amap.key) == ('meta/meta.csv', 'derm')


@pytest.mark.parametrize('name', ['derm-synth', 'cxr-synth'])
def test_shipped_mappings_fit_their_sets(name):
    mapping = DATA_SAMPLES/'symptoms'/f'{name}_attributes.json'
    if not mapping.is_file(): pytest.skip(f'{mapping.name} not shipped')
    amap = load_attribute_map(mapping, load_symptoms(DATA_SAMPLES/'symptoms'/f'{name}.json'))
    test = load_splits(DATA_SAMPLES/name, splits=('test',), check=False)['test']
    rows = match_annotations(load_annotations(DATA_SAMPLES/name/'attributes'/'test.csv', amap.key),
                             [p for p, _ in test.items], amap.key)
    pres = presence(amap, rows)
    assert pres.shape == (len(test), len(amap.names)) and amap.unmapped == []
    known = pres[:, [not all(v is None for v in col) for col in pres.T]]
    assert known.size and all(v is not None for v in known.ravel())                 # the generator recorded everything


def test_scores_on_a_tiny_model_fit_the_library():
    torch.manual_seed(0)
    model = ViP(load_clip(TINY, device='cpu'), SYMPTOMS).eval()
    feats, labels = torch.randn(6, model.clip.embed_dim), [0, 0, 0, 1, 1, 1]
    pres = np.array([[True, False, False, None]] * 3 + [[False, True, True, None]] * 3, dtype=object)
    both = score_explanations(model, feats, labels, pres)
    assert set(both) == {'vip', 'zeroshot_symptoms'}
    s = score_explanations(model, feats, labels, pres, reference=feats)
    for m in both:                                        # a per-symptom constant changes no AUC
        for a, b in zip(both[m]['symptoms'], s[m]['symptoms']):
            assert (a['auc'] is None and b['auc'] is None) or abs(a['auc'] - b['auc']) < 1e-6
        assert both[m]['symptoms'][0]['auc'] is not None and both[m]['symptoms'][3]['auc'] is None
    with pytest.raises(VipError, match='do not fit'):
        grounding_scores(torch.zeros(6, 3), torch.zeros(6), labels, symptom_labels(model)[:3], pres)
