"""Tests of the symptom editor (vip.editor): every edit re-scored as a hand computation says, the widget driven
without a browser, the edited file saved with its record and read back.

The pocket CLIP on 16 pictures per class of the bundled synthetic derm-synth set (teaching material, not patients);
the image features are computed once per test session.
"""
import json
from datetime import datetime

import matplotlib
matplotlib.use('agg')
import numpy as np
import pytest
import torch
from IPython.utils.capture import capture_output
from sklearn.metrics import roc_auc_score

from vip.core import VipError
from vip.audit import audit_scores, dataset_features
from vip.baselines import zeroshot_symptoms
from vip.clip import DATA_SAMPLES, POCKET, encode_texts, load_clip
from vip.data import folder_dataset, sample_k_shot
from vip.editor import (EditedEvidence, EditedSymptoms, SymptomEditor, editor, score_symptoms, simple_aucs,
                        zero_shot_evidence)
from vip.explain import explain_features
from vip.model import ViP
from vip.symptoms import load_symptoms, read_symptom_file

SYMPTOM_FILE = DATA_SAMPLES/'symptoms'/'derm-synth.json'
NOTHING = 'a purple giraffe on the moon'


@pytest.fixture(scope='module')
def pocket():
    return load_clip(POCKET, device='cpu')


@pytest.fixture(scope='module')
def data(pocket):
    "The explored split (16 validation pictures per class), its features and the symptoms of the bundled file."
    ds = sample_k_shot(folder_dataset(DATA_SAMPLES/'derm-synth', 'val'), 16, seed=1)
    return {'val': ds}, {'val': dataset_features(pocket, ds)}, load_symptoms(SYMPTOM_FILE, ds.classes)


@pytest.fixture(scope='module')
def vip(pocket, data):
    "A ViP on the bundled symptoms (untrained: the tests check what is shown beside the zero-shot scores, not its skill)."
    torch.manual_seed(0)
    return ViP(pocket, data[2], data[0]['val'].classes).eval()


def direct(pocket, texts, feats):
    "Hand computation: accuracy and similarities (N, P) of classification by symptoms on `texts`."
    f, y = feats['val']
    zs = zeroshot_symptoms(pocket, texts, list(texts))
    return float((zs.forward_features(f).argmax(1) == y).float().mean()), zs.symptom_scores(f)


def make(vip, data, **kw):
    splits, feats, _ = data
    return SymptomEditor(vip, splits, SYMPTOM_FILE, features=feats, **kw)


# ---------------------------------------------------------------- the arithmetic
def test_simple_aucs_count_pairs_like_sklearn_and_the_audit(data):
    scores = torch.tensor([[0.9, 1.0], [0.4, 1.0], [0.4, 1.0], [0.2, 1.0], [0.7, 1.0]])   # column 1: constant
    labels = torch.tensor([0, 0, 1, 1, 1])
    auc = simple_aucs(scores, labels, [0, 1])
    assert auc[0] == pytest.approx((3 + 0.5 + 1) / 6) and auc[1] == 0.5          # a tie counts one half
    assert np.isnan(simple_aucs(scores, torch.zeros(5), [0, 1])[0])              # no image of another class
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=(40, 3)).round(1), rng.integers(0, 2, 40)             # rounded: many ties
    owner = [0, 1, 1]
    expected = [roc_auc_score(y == o, s[:, p]) for p, o in enumerate(owner)]
    assert simple_aucs(s, y, owner) == pytest.approx(expected, abs=1e-12)
    assert simple_aucs(s, y, owner) == pytest.approx(audit_scores(s, y, {'a': ['x'], 'b': ['y', 'z']}).auc, abs=1e-12)


def test_replacing_a_symptom_moves_only_its_class_score(pocket, data):
    "logit_c is the mean similarity to the class's symptoms: replacing symptom j moves class c by (new - old) / S_c."
    splits, feats, derm = data
    edited = {**derm, 'melanoma': derm['melanoma'][:2] + [NOTHING] + derm['melanoma'][3:]}
    before, after = (score_symptoms(pocket, t, list(derm), feats) for t in (derm, edited))
    f = feats['val'][0][5]
    e0, e1 = zero_shot_evidence(before, f), zero_shot_evidence(after, f)
    t_old, t_new = encode_texts(pocket, [derm['melanoma'][2], NOTHING])
    assert e1.class_scores[0] - e0.class_scores[0] == pytest.approx(float(f @ (t_new - t_old)) / 4, abs=1e-6)
    assert e1.class_scores[1] == e0.class_scores[1]
    acc, sims = direct(pocket, edited, feats)
    assert after['splits']['val']['accuracy'] == acc
    assert torch.allclose(torch.tensor(e1.symptom_scores), sims[5] - sims.mean(0), atol=1e-5)   # relative to the mean
    assert e1.prediction == list(derm)[int(np.argmax(e1.probs))]


# ---------------------------------------------------------------- the editor
def test_a_symptom_that_matches_nothing_falls_to_chance(pocket, vip, data):
    ed = make(vip, data)
    rows = ed.state['rows']
    best = max(range(4), key=lambda j: rows[j]['auc'])                           # the best melanoma symptom
    change = ed.edit_symptom('melanoma', best, NOTHING)
    acc, sims = direct(pocket, ed.symptoms.texts, data[1])
    y = data[1]['val'][1]
    assert change.accuracy['val'][1] == acc
    assert change.accuracy['val'][0] == direct(pocket, data[2], data[1])[0]
    assert change.before == rows[best] and change.after['symptom'] == NOTHING
    assert change.after['auc'] == pytest.approx(roc_auc_score(y == 0, sims[:, best]))
    assert abs(change.after['auc'] - 0.5) < 0.15 < change.before['auc'] - change.after['auc']
    assert ed.edits == 1 and ed.symptoms.log[0]['old'] == data[2]['melanoma'][best]


def test_a_symptom_moved_to_the_other_class_has_one_minus_its_auc(vip, data):
    "With two classes, 'a melanoma picture scores higher than a nevus one' is the nevus AUC's event seen from the other side."
    ed = make(vip, data)
    nevus = ed.state['rows'][4 + 2]
    moved = ed.edit_symptom('melanoma', 0, nevus['symptom'])
    assert moved.after['auc'] == pytest.approx(1 - nevus['auc'], abs=1e-12)


def test_symptoms_that_say_the_same_for_both_classes_give_chance(pocket, data):
    splits, feats, derm = data
    ed = SymptomEditor(None, splits, derm, clip=pocket, features=feats)
    for j, s in enumerate(derm['melanoma']): last = ed.edit_symptom('nevus', j, s)
    assert last.accuracy['val'][1] == 0.5                                        # every tie goes to melanoma: 16 of 32
    assert ed.state['splits']['val']['probs'][:, 0].tolist() == pytest.approx([0.5] * 32)


def test_add_and_remove(pocket, vip, data):
    ed = make(vip, data)
    added = ed.add_symptom('nevus', 'the spot is small and round')
    assert added.before is None and added.after['n'] == 9 and added.edit['index'] == 4
    assert added.accuracy['val'][1] == direct(pocket, ed.symptoms.texts, data[1])[0]
    removed = ed.remove_symptom('melanoma', 1)
    assert removed.after is None and removed.before['symptom'] == data[2]['melanoma'][1]
    assert [len(v) for v in ed.symptoms.texts.values()] == [3, 5]
    assert ed.state['rows'][3]['n'] == 4 and ed.state['rows'][3]['cls'] == 'nevus'     # the rows follow
    assert [r['action'] for r in ed.symptoms.log] == ['add', 'remove']


def test_bad_edits_are_refused_in_one_line_and_change_nothing(vip, data):
    ed = make(vip, data)
    state, texts = ed.state, {c: list(v) for c, v in ed.symptoms.texts.items()}
    for call, words in [(lambda: ed.edit_symptom('nevus', 0, '  '), 'is empty'),
                        (lambda: ed.edit_symptom('nevus', 1, texts['nevus'][0].upper()), 'repeats the symptom'),
                        (lambda: ed.add_symptom('nevus', 'spot ' * 80), 'shorten it'),
                        (lambda: ed.edit_symptom('nevus', 2, texts['nevus'][2]), 'already reads'),
                        (lambda: ed.remove_symptom('nevus', 4), 'indices 0 to 3'),
                        (lambda: ed.edit_symptom('nevus', -1, 'x'), 'indices 0 to 3'),
                        (lambda: ed.add_symptom('naevus', 'x'), 'unknown class'),
                        (lambda: ed.edit_symptom('nevus', 0, 3), 'not a string'),
                        (lambda: ed.symptoms.preview('rename', 'nevus', 0, 'x'), 'unknown edit')]:
        with pytest.raises(VipError, match=words) as e: call()
        assert '\n' not in str(e.value)
    assert ed.state is state and ed.symptoms.texts == texts and ed.edits == 0
    one = SymptomEditor(None, data[0], {'melanoma': ['dark'], 'nevus': ['brown']}, clip=vip.clip, features=data[1])
    with pytest.raises(VipError, match='no symptom left'): one.remove_symptom('nevus', 0)


# ---------------------------------------------------------------- what is shown: zero-shot, and the trained ViP apart
def test_the_evidence_on_screen_is_zero_shot_and_the_vip_stays_as_trained(pocket, vip, data):
    ed = make(vip, data)
    first = ed.evidence('val', 3)
    change = ed.edit_symptom('nevus', 3, NOTHING)
    ev = change.evidence
    assert isinstance(ev, EditedEvidence) and ev.path == data[0]['val'].items[3][0] and ev.label == data[1]['val'][1][3]
    acc, sims = direct(pocket, ed.symptoms.texts, data[1])
    assert torch.allclose(torch.tensor(ev.symptom_scores), sims[3] - sims.mean(0), atol=1e-5)
    assert ('nevus', NOTHING) in ev.symptoms and ev.sentence().startswith('zero-shot by the symptoms (1 edit) sees:')
    own = explain_features(vip, data[1]['val'][0][3:4])[0]
    assert ev.trained.probs == own.probs == first.trained.probs                   # the edit never reaches the ViP
    assert ev.trained.symptoms == own.symptoms and ('nevus', NOTHING) not in ev.trained.symptoms
    text = str(change)
    assert 'on screen:' in text and 'ViP as trained, on its own symptoms: predicted' in text


def test_an_uploaded_picture_is_scored_like_its_file(vip, data):
    ed = make(vip, data)
    ev, img = ed.evidence_of_bytes('mine.png', data[0]['val'].items[0][0].read_bytes())
    same = ed.evidence('val', 0)
    assert ev.probs == pytest.approx(same.probs, abs=1e-5) and ev.label is None and ev.path.name == 'mine.png'
    assert img.size == (64, 64)
    with pytest.raises(VipError, match='cannot read the uploaded file'): ed.evidence_of_bytes('x.png', b'no picture')


# ---------------------------------------------------------------- the widget without a browser
def test_widget_buttons_edit_and_the_scores_follow(pocket, vip, data, tmp_path):
    with capture_output() as shown:
        ed = make(vip, data)
        ed.widget()
        c = ed.controls
        c['symptom_class'].value = 'nevus'
        c['symptom'].value = 1
        assert c['text'].value == data[2]['nevus'][1]                           # the text box shows the symptom
        c['text'].value = NOTHING
        c['replace'].click()
        assert ed.symptoms.texts['nevus'][1] == NOTHING and ed.edits == 1
        assert ed.accuracy()['val'] == direct(pocket, ed.symptoms.texts, data[1])[0]
        assert ed.current.sentence().startswith('zero-shot by the symptoms (1 edit)')   # the picture was redrawn
        c['text'].value = 'the spot is small and round'
        c['add'].click()
        assert ed.symptoms.texts['nevus'][-1] == 'the spot is small and round' and c['symptom'].value == 4
        c['remove'].click()                                                       # the one just added
        assert ed.symptoms.texts['nevus'] == [*data[2]['nevus'][:1], NOTHING, *data[2]['nevus'][2:]]
        c['text'].value = data[2]['nevus'][0]
        c['add'].click()                                                          # a repeat: refused
        assert ed.edits == 3
        c['image'].value = c['image'].options[5][1]
        assert ed.current.path == data[0]['val'].items[5][0]
        c['save_path'].value = str(tmp_path/'edited.json')
        c['save'].click()
        c['save'].click()                                                         # again: refused, not replaced
    assert 'repeats the symptom' in shown.stdout and 'already exists' in shown.stdout
    assert load_symptoms(tmp_path/'edited.json', list(data[2])) == ed.symptoms.texts


def test_static_view_shows_the_audit_table(vip, data, capsys):
    ed = editor(vip, data[0], SYMPTOM_FILE, features=data[1], cls='nevus', index=2)
    out = capsys.readouterr().out
    assert isinstance(ed, SymptomEditor) and ed.current.label == 1
    assert 'zero-shot by the symptoms sees:' in out and 'ViP as trained, on its own symptoms: predicted' in out
    assert '#  class' in out and 'drop  flags' in out and 'audited on val (32 images)' in out
    plain = SymptomEditor(None, data[0], data[2], clip=vip.clip, features=data[1], audit=None)
    lines = plain.table().splitlines()
    assert lines[0].split() == ['#', 'class', 'symptom', 'AUC'] and len(lines) == 2 + 8 + 1
    assert [float(l.split()[-1]) for l in lines[2:10]] == pytest.approx([r['auc'] for r in ed.state['rows']], abs=5e-4)


# ---------------------------------------------------------------- saving
def test_saved_file_reloads_records_every_edit_and_replaces_nothing(vip, data, tmp_path):
    source = tmp_path/'derm-synth.json'
    source.write_bytes(SYMPTOM_FILE.read_bytes())                                # a copy: the bundled file stays as it is
    ed = SymptomEditor(vip, data[0], source, features=data[1])
    ed.edit_symptom('melanoma', 1, NOTHING)
    ed.add_symptom('nevus', 'the spot is small and round')
    ed.remove_symptom('nevus', 0)
    out = ed.save_edited(tmp_path/'edited.json')
    assert load_symptoms(out, list(data[2])) == ed.symptoms.texts
    entries, meta = read_symptom_file(out)
    assert meta['edited_from'] == 'derm-synth.json' and meta['wording'] == 'plain' and meta['format'] == 'vip-symptoms'
    assert [(e['action'], e['cls'], e['index'], e['old'], e['new']) for e in meta['edits']] == [
        ('edit', 'melanoma', 1, data[2]['melanoma'][1], NOTHING), ('add', 'nevus', 4, None, 'the spot is small and round'),
        ('remove', 'nevus', 0, data[2]['nevus'][0], None)]
    assert all(datetime.fromisoformat(e['time']).tzinfo is not None for e in meta['edits'])
    assert entries['melanoma'][1] == NOTHING and entries['melanoma'][0]['original'] == 'asymmetric pigmented lesion'
    original, saved = source.read_bytes(), out.read_bytes()
    with pytest.raises(VipError, match='is the symptom file being edited'): ed.save_edited(source)
    with pytest.raises(VipError, match='already exists'): ed.save_edited(out)
    assert source.read_bytes() == original and out.read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ['derm-synth.json', 'edited.json']   # no temporary file left
    ed.save_edited(source, overwrite=True)                                       # asked for: the source is replaced
    again = EditedSymptoms(source, list(data[2]))
    assert again.texts == ed.symptoms.texts and len(again.meta['edits']) == 3
    again.commit(*again.preview('edit', 'nevus', 0, 'the spot is pale'))
    again.save(tmp_path/'twice.json')
    assert [e['action'] for e in json.loads((tmp_path/'twice.json').read_text())['meta']['edits']] == ['edit', 'add', 'remove', 'edit']


def test_the_editor_needs_a_clip_and_fitting_features(vip, data):
    with pytest.raises(VipError, match='no CLIP'): SymptomEditor(None, data[0], data[2])
    with pytest.raises(VipError, match='nothing to edit'): SymptomEditor(None, data[0])
    with pytest.raises(VipError, match="features of split 'val'"): SymptomEditor(vip, data[0], features={})
    with pytest.raises(VipError, match='unknown audit split'): SymptomEditor(vip, data[0], features=data[1], audit_split='test')
    with pytest.raises(VipError, match='is not the CLIP of the model'):
        SymptomEditor(vip, data[0], clip=load_clip(POCKET, device='cpu'), features=data[1])
    with pytest.raises(VipError, match='no symptoms or merge prompt'):
        SymptomEditor(zeroshot_symptoms(vip.clip, data[2]), data[0], data[2], features=data[1])
    ed = SymptomEditor(vip, data[0], features=data[1])                           # the ViP's own symptoms
    assert ed.symptoms.texts == vip.symptoms and ed.symptoms.source is None
