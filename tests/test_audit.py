"""Tests of the symptom audit (vip.audit): AUCs against a hand computation, flags, the report, the picture, pairs.

The arithmetic is checked on hand-made image and symptom features; the pocket CLIP on a few 64-pixel images of the
bundled synthetic sets checks the wiring (teaching material, not medical data).
"""
import json
from pathlib import Path

import matplotlib
matplotlib.use('agg')
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vip.core import VipError
from vip.audit import (Audit, audit_folder, audit_scores, audit_symptoms, confused_pairs, dataset_features,
                       format_audit, load_audit, plot_audit, save_audit)
from vip.baselines import zeroshot_symptoms
from vip.clip import DATA_SAMPLES, POCKET, load_clip
from vip.data import folder_dataset, sample_k_shot
from vip.symptoms import load_symptoms

SYMPTOMS = {'a': ['reads dimension 0', 'matches nothing'], 'b': ['reads dimension 1'], 'c': ['reads dimension 2']}


@pytest.fixture(scope='module')
def hand():
    "Nine hand-made image features of three classes, and the similarities to four hand-made symptom features."
    feats = F.normalize(torch.tensor([[1.0, 0.0, 0.0, 0], [0.8, 0.2, 0.1, 0], [0.6, 0.1, 0.3, 0],      # a
                                      [0.98, 0.2, 0.0, 0], [0.97, 0.1, 0.1, 0], [0.9, 0.3, 0.0, 0],    # b
                                      [0.1, 0.0, 1.0, 0], [0.0, 0.2, 0.9, 0], [0.2, 0.1, 0.8, 0]]), dim=1)  # c
    text = torch.eye(4)[[0, 3, 1, 2]]            # symptom features: dims 0, 3 (nothing is there), 1, 2
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    return feats @ text.T, labels                # (N, P), (N,)


def pair_counting_auc(scores, positive):
    "AUC by counting every (positive, negative) pair; ties count one half."
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


@pytest.fixture(scope='module')
def pocket():
    return load_clip(POCKET, device='cpu')


# ---------------------------------------------------------------- the arithmetic, by hand
def test_aucs_equal_a_hand_computation(hand):
    scores, labels = hand
    a = audit_scores(scores, labels, SYMPTOMS)
    owner = [0, 0, 1, 2]
    expected = [pair_counting_auc(scores[:, p].tolist(), (labels == owner[p]).tolist()) for p in range(4)]
    assert a.auc == pytest.approx(expected, abs=1e-12)
    assert a.auc == pytest.approx([13 / 18, 0.5, 12 / 18, 1.0])
    # the pair AUC of symptom 1 (class a) against class b alone, by hand as well
    ab = labels != 2
    assert a.pair_auc[0]['b'] == pytest.approx(pair_counting_auc(scores[ab, 0].tolist(), (labels[ab] == 0).tolist()))
    assert a.pair_auc[0]['b'] == pytest.approx(4 / 9) and a.pair_auc[0]['c'] == 1.0


def test_a_symptom_that_matches_nothing_gets_the_lowest_auc(hand):
    scores, labels = hand
    a = audit_scores(scores, labels, SYMPTOMS)
    assert int(np.argmin(a.auc)) == 1 and a.auc[1] == 0.5 and sorted(a.auc)[1] > 0.5
    assert a.weak == [1]
    assert a.redundant_with(1) == []                    # a constant response correlates with nothing


@pytest.mark.parametrize('min_auc, weak', [(0.5, []), (0.6, [1]), (0.7, [1, 2]), (0.8, [0, 1, 2]), (1.01, [0, 1, 2, 3])])
def test_the_threshold_decides_the_weak_flags(hand, min_auc, weak):
    a = audit_scores(*hand, SYMPTOMS, min_auc=min_auc)
    assert a.weak == weak
    assert [r['weak'] for r in a.rows()] == [i in weak for i in range(4)]
    assert len(a.symptoms) == 4                         # flagged, never dropped


@pytest.mark.parametrize('max_corr, pairs', [(0.0, [(0, 2)]), (0.2, [(0, 2)]), (0.21, []), (0.9, [])])
def test_the_threshold_decides_the_redundant_pairs(hand, max_corr, pairs):
    scores, labels = hand
    a = audit_scores(scores, labels, SYMPTOMS, max_corr=max_corr)
    r = np.corrcoef(scores[:, [0, 2, 3]].numpy().T)     # the symptoms whose response varies (Pearson by numpy)
    assert [(i, j) for i, j, _ in a.pairs] == pairs
    assert [v for *_, v in a.pairs] == pytest.approx([r[0, 1]] * len(pairs), abs=1e-4)
    assert a.redundant_with(2) == ([0] if pairs else [])


def test_confused_with_and_leave_one_out(hand):
    scores, labels = hand
    a = audit_scores(scores, labels, SYMPTOMS)
    assert a.confused_with == [['b'], ['b', 'c'], [], []]
    means = torch.stack([scores[:, :2].mean(1), scores[:, 2], scores[:, 3]], 1).numpy()
    assert a.accuracy == pytest.approx((means.argmax(1) == labels.numpy()).mean())
    without_0 = torch.stack([scores[:, 1], scores[:, 2], scores[:, 3]], 1).numpy()
    assert a.drop[0] == pytest.approx(a.accuracy - (without_0.argmax(1) == labels.numpy()).mean())
    assert a.drop[2:] == [None, None]                   # the only symptom of its class
    assert np.array(a.confusion).sum() == 9 and a.counts == [3, 3, 3]


def test_bad_input_gives_one_line_errors(hand):
    scores, labels = hand
    for call, words in [(lambda: audit_scores(scores[:, :3], labels, SYMPTOMS), 'do not fit 4 symptoms'),
                        (lambda: audit_scores(scores[:6], labels[:6], SYMPTOMS), 'images of each of the 3 classes'),
                        (lambda: audit_scores(scores, labels[:4], SYMPTOMS), '4 labels for 9 images')]:
        with pytest.raises(VipError, match=words) as e: call()
        assert '\n' not in str(e.value)


# ---------------------------------------------------------------- the report, the table, the picture, the pairs
def test_report_is_atomic_never_overwritten_and_reads_back(hand, tmp_path):
    a = audit_scores(*hand, SYMPTOMS, info={'data': 'hand', 'symptom_file': 'hand.json'})
    out = save_audit(a, tmp_path/'audit.json')
    report = json.loads(out.read_text())
    assert report['format'] == 'vip-symptom-audit' and report['weak'] == [2] and report['symptom_file'] == 'hand.json'
    assert report['symptoms'][2]['drop'] is None and report['symptoms'][0]['confused_with'] == ['b']
    before = out.read_bytes()
    with pytest.raises(VipError, match='already exists'): save_audit(a, out)
    assert out.read_bytes() == before
    with pytest.raises(VipError, match='is a folder'): save_audit(a, tmp_path)
    save_audit(a, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['audit.json']
    back = load_audit(out)
    assert back.weak == a.weak and back.symptoms == a.symptoms and format_audit(back) == format_audit(a)
    (tmp_path/'other.json').write_text('[1, 2]')
    with pytest.raises(VipError, match='not a readable symptom audit'): load_audit(tmp_path/'other.json')


def test_table_shows_flags(hand):
    lines = format_audit(audit_scores(*hand, SYMPTOMS)).splitlines()
    assert lines[3].endswith('weak; confused with b, c') and 'matches nothing' in lines[3]
    assert lines[-1].startswith('4 symptoms, mean AUC 0.722, 1 weak (AUC < 0.6)')


def _overlaps(fig):
    fig.canvas.draw()
    r, ax = fig.canvas.get_renderer(), fig.axes[0]
    texts = [t for t in [*ax.get_yticklabels(), *ax.texts, ax.title, ax.xaxis.label, *fig.legends[0].get_texts()]
             if t.get_text()]
    boxes = [t.get_window_extent(r) for t in texts]
    bad = [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
           if boxes[i].overlaps(boxes[j])]
    return bad + [t.get_text() for t in ax.texts if t.get_window_extent(r).x1 > ax.get_window_extent(r).x1]


def test_picture_marks_weak_and_redundant_without_overlaps(hand):
    import matplotlib.pyplot as plt
    long = {'a': ['a very long symptom sentence that has to wrap over several lines of the label column', 'x'],
            'b': ['y'], 'c': ['z']}
    a = audit_scores(*hand, long, max_corr=0.0)
    fig = plot_audit(a, wrap=24)
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert len(notes) == 4 and sum('weak' in t for t in notes) == 1 and sum('≈' in t for t in notes) == 2
    assert _overlaps(fig) == []
    plt.close(fig)


def test_confused_pairs_from_a_matrix_and_an_audit(hand):
    cm = [[50, 8, 2], [10, 30, 0], [0, 1, 9]]
    assert confused_pairs(cm, ['a', 'b', 'c'], k=2) == [('a', 'b'), ('b', 'c')]
    assert confused_pairs(np.eye(2) * 5, ['a', 'b']) == []
    a = audit_scores(*hand, SYMPTOMS)
    assert confused_pairs(a, k=3) == confused_pairs(a.confusion, a.classes, k=3)
    with pytest.raises(VipError, match='needs its class names'): confused_pairs(cm)


# ---------------------------------------------------------------- with the pocket CLIP on the bundled synthetic sets
def test_audit_uses_the_prompts_of_zeroshot_symptoms(pocket):
    ds = sample_k_shot(folder_dataset(DATA_SAMPLES/'derm-synth', 'train'), 8, seed=1)
    feats, labels = dataset_features(pocket, ds)
    sym = load_symptoms(DATA_SAMPLES/'symptoms'/'derm-synth.json', ds.classes)
    a = audit_symptoms(pocket, feats, labels, sym, ds.classes)
    zs = zeroshot_symptoms(pocket, sym, ds.classes)
    assert a.accuracy == pytest.approx(float((zs.forward_features(feats).argmax(1) == labels).float().mean()))
    from sklearn.metrics import roc_auc_score
    assert a.auc[4] == pytest.approx(roc_auc_score(labels == 1, zs.symptom_scores(feats)[:, 4]))
    folder = audit_folder(pocket, DATA_SAMPLES/'derm-synth', DATA_SAMPLES/'symptoms'/'derm-synth.json', k=8, seed=1)
    assert folder.auc == pytest.approx(a.auc) and folder.info['symptom_file'] == 'derm-synth.json'
    assert '/' not in folder.info['clip']               # no machine path in a report


def test_medical_wording_audits_worse_with_the_pocket_clip(pocket):
    "The pocket CLIP learned plain words only: the medical cxr-synth symptoms rank the images worse."
    ds = sample_k_shot(folder_dataset(DATA_SAMPLES/'cxr-synth', 'train'), 32, seed=1)
    feats, labels = dataset_features(pocket, ds)
    mean = {w: np.mean(audit_symptoms(pocket, feats, labels,
                                      load_symptoms(DATA_SAMPLES/'symptoms'/f'cxr-synth{w}.json', ds.classes)).auc)
            for w in ('', '_medical')}
    assert mean['_medical'] < mean[''] - 0.1


def test_derm5_audit_finds_the_look_alike_pair(pocket):
    "derm5-synth draws keratosis-like spots with the melanoma-like dots and edges: the audit must find that pair."
    a = audit_folder(pocket, DATA_SAMPLES/'derm5-synth', DATA_SAMPLES/'symptoms'/'derm5-synth.json')
    assert a.counts == [40] * 5 and len(a.auc) == 20
    assert confused_pairs(a, k=1) == [('melanoma', 'seborrheic keratosis')]
    auc = {s: x for (_, s), x in zip(a.symptoms, a.auc)}
    assert auc['a mix of tan, brown and black'] > 0.85                 # the palette it reads well
    assert auc['the spot is lopsided, not the same on both sides'] < a.min_auc   # the shape it reads badly
