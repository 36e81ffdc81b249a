"Every method of the comparison through vip_train, vip_eval and compare: prompt learners, adapters and the image-side prompts."
import json

import pytest

from test_train import _args, _toy
from vip.cli import train_main
from vip.run import evaluate_run
from vip.train import METHODS


@pytest.fixture
def toy(tmp_path): return _toy(tmp_path/'toy')


def test_every_method_trains_tests_and_evaluates_again(tmp_path, toy):
    assert train_main(_args(toy, tmp_path/'runs', 'all', '--method', 'all', '--epochs', '2')) == 0
    run = tmp_path/'runs'/'all'
    m = json.loads((run/'metrics.json').read_text())['methods']
    assert set(m) == set(METHODS)
    d = json.loads((run/'metrics_detail.json').read_text())
    # features once (12 images in each split), then each image-side method (vpt, vpt_deep, maple) runs the image tower
    # on the 12 training and 12 validation images per epoch (their own recipe: 5 epochs) and on the 12 test images once
    assert (d['images_encoded'], d['image_forwards']) == (36, 36 + 3 * (5 * (12 + 12) + 12))
    for k in ('vpt', 'vpt_deep', 'maple', 'clip_adapter'): assert (run/f'{k}-best.safetensors').is_file()
    ev = evaluate_run(run, progress=False)['methods']
    for k in METHODS: assert ev[k] == pytest.approx(m[k], abs=1e-6), k          # the same numbers, fitted or loaded again


def test_image_side_methods_refuse_a_resnet_image_tower(tmp_path, toy, capsys):
    assert train_main(_args(toy, tmp_path/'runs', 'rn', '--method', 'vpt', '--backbone', 'RN50', '--pretrained', 'none')) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'ViT' in err
