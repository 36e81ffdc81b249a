"Fast CPU tests of the explanations on the tiny random CLIP: scores against a direct computation, the static explorer, run-folder files."
import json, sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vip.core import VipError
from vip.clip import load_clip, TINY
from vip.data import ImageDataset
from vip.model import ViP
from vip import explain
from vip.explain import (Evidence, Explorer, explain_features, explain_image, explorer, has_widget_frontend,
                         image_scores, save_run_explanations, symptom_baseline, symptom_labels)

SYMPTOMS = {'melanoma': ['the spot has jagged edges', 'the spot has several colours', 'small dark dots inside the spot'],
            'nevus': ['the spot is symmetric and round', 'the spot has one even brown colour']}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return ViP(load_clip(TINY, device='cpu'), SYMPTOMS).eval()


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root, rng, items = tmp_path_factory.mktemp('imgs'), np.random.default_rng(0), []
    for i in range(6):
        p = root/f'{i}.png'
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        items.append((p, i % 2))
    return ImageDataset(items, ['melanoma', 'nevus'])


def test_scores_equal_direct_computation(model):
    feats = torch.randn(3, model.clip.embed_dim)
    sc = image_scores(model, feats)
    with torch.no_grad(): T, cf = model.symptom_features(), model.class_features()
    direct = torch.tensor([[F.cosine_similarity(f, t, dim=0).item() for t in T] for f in feats])
    assert torch.allclose(sc['symptoms'], direct, atol=1e-5)
    assert torch.allclose(sc['classes'], F.normalize(feats, dim=-1) @ cf.T, atol=1e-5)
    assert torch.allclose(sc['probs'], model.forward_features(feats).softmax(-1).detach(), atol=1e-5)
    base = symptom_baseline(model, feats)
    ev = explain_features(model, feats, labels=[0, 1, 0], baseline=base)
    assert torch.allclose(torch.tensor(ev[1].symptom_scores), direct[1] - base, atol=1e-5)
    assert ev[1].symptoms == symptom_labels(model) and ev[1].relative
    assert ev[0].sentence(2).startswith('the model sees: ')


def test_static_explorer(model, dataset, capsys):
    # plain Python (no IPython shell): no frontend, so the explorer prints a static view and returns its evidence
    assert not has_widget_frontend()
    ev = explorer(model, {'test': dataset}, cls='nevus', index=2)
    assert isinstance(ev, Evidence) and ev.path == dataset.items[5][0] and ev.label == 1
    assert 'the model sees:' in capsys.readouterr().out
    same = explain_image(model, dataset.items[5][0], label=1)
    assert ev.probs == same.probs
    ev2 = explorer(model, {'test': dataset}, widgets=False)
    assert ev2.path == dataset.items[0][0]
    with pytest.raises(VipError, match='out of range'): explorer(model, {'test': dataset}, widgets=False, index=99)


def test_widgets_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'ipywidgets', None)        # import ipywidgets now raises ImportError
    assert not has_widget_frontend(shell=type('Kernel', (), {'kernel': object()})())


def test_widget_callbacks(model, dataset):
    ex = Explorer(model, {'test': dataset})
    ex.widget()
    assert ex.current.path == dataset.items[0][0]
    ex.controls['cls'].value = 'nevus'
    assert ex.current.label == 1


def test_run_folder(model, tmp_path):
    (tmp_path/'config.json').write_text(json.dumps({'data': str(tmp_path/'my-data')}))
    before = model.symptom_weights()
    path = save_run_explanations(tmp_path, model, before)
    assert path.read_bytes()[:4] == b'\x89PNG'
    assert json.loads((tmp_path/'symptom_weights_before.json').read_text())['nevus'][0][0] == SYMPTOMS['nevus'][0]
    assert explain._dataset_title(tmp_path) == 'my-data'
    with pytest.raises(VipError, match='not found'): save_run_explanations(tmp_path/'nope', model)
