"""The feature cache (issue 16): each image encoded once across runs, re-encoded when it changes, never a wrong feature."""
import json, multiprocessing as mp, os, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch

from test_train import _args, _toy
from vip.cli import train_main
from vip.clip import TINY, load_clip
from vip.data import load_splits
from vip.features import FeatureCache
from vip.train import dataset_features


def _detail(run): return json.loads((run/'metrics_detail.json').read_text())


def _train(tmp_path, toy, name, *extra):
    assert train_main(_args(toy, tmp_path/'runs', name, '--feature_cache', str(tmp_path/'fc'), *map(str, extra))) == 0
    return tmp_path/'runs'/name


@pytest.fixture
def toy(tmp_path): return _toy(tmp_path/'toy')


def test_second_run_encodes_nothing_and_a_touched_image_is_encoded_again(tmp_path, toy):
    a = _train(tmp_path, toy, 'a')
    assert _detail(a)['images_encoded'] == 36                 # 12 images in each of train, val, test
    b = _train(tmp_path, toy, 'b')
    assert _detail(b)['images_encoded'] == 0
    assert json.loads((a/'metrics.json').read_text())['methods'] == json.loads((b/'metrics.json').read_text())['methods']
    os.utime(toy/'test'/'nevus'/'2.png', ns=(1, 1_700_000_000 * 10**9))
    assert _detail(_train(tmp_path, toy, 'c'))['images_encoded'] == 1


def test_metrics_are_the_same_with_and_without_the_cache(tmp_path, toy):
    on = _train(tmp_path, toy, 'on')
    assert train_main(_args(toy, tmp_path/'runs', 'off', '--feature_cache', 'none')) == 0
    m = lambda r: json.loads((r/'metrics.json').read_text())
    assert m(on) == m(tmp_path/'runs'/'off')
    assert _detail(tmp_path/'runs'/'off')['images_encoded'] == 36


def test_a_damaged_cache_file_is_encoded_again_with_a_warning(tmp_path, toy):
    torch.manual_seed(0); clip = load_clip(TINY, device='cpu')
    ds = load_splits(toy)['test']
    cache = FeatureCache(tmp_path/'fc', clip)
    want, _ = dataset_features(clip, ds, progress=False, cache=cache)
    for f in list(cache.dir.glob('*.safetensors'))[:3]: f.write_bytes(f.read_bytes()[:30])
    again = FeatureCache(tmp_path/'fc', clip)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        got, _ = dataset_features(clip, ds, progress=False, cache=again)
    assert (got - want).abs().max() < 1e-5 and again.encoded >= 1     # in other batches: equal up to rounding
    assert any('damaged' in str(x.message) for x in w)


def _writer(root, seed):
    torch.manual_seed(0); clip = load_clip(TINY, device='cpu')
    c = FeatureCache(root, clip)
    g = torch.Generator().manual_seed(seed)
    for i in range(20):           # many small writes into the same few shards, racing the other process
        c.put({f'{j:02x}' + f'{seed}-{i}'.rjust(38, '0'): torch.randn(clip.embed_dim, generator=g) for j in range(4)})


def test_two_processes_writing_the_same_cache_leave_it_readable(tmp_path):
    ctx = mp.get_context('spawn')
    ps = [ctx.Process(target=_writer, args=(tmp_path/'fc', s)) for s in (1, 2)]
    for p in ps: p.start()
    for p in ps: p.join(120); assert p.exitcode == 0
    torch.manual_seed(0); clip = load_clip(TINY, device='cpu')
    cache = FeatureCache(tmp_path/'fc', clip)
    with warnings.catch_warnings():
        warnings.simplefilter('error')                       # a damaged shard would warn: none may
        for f in cache.dir.glob('*.safetensors'): assert cache._load(f)
    assert list(cache.dir.glob('.*.tmp')) == []


def test_augmented_views_are_encoded_once_and_on_the_fly_augmentation_counts_every_epoch(tmp_path, toy, capsys):
    d = _detail(_train(tmp_path, toy, 'views', '--augment', 'true', '--aug_views', 3))
    assert (d['images_encoded'], d['image_forwards']) == (24 + 3 * 12, 24 + 3 * 12)   # val and test once, 3 views of train
    again = _detail(_train(tmp_path, toy, 'views2', '--augment', 'true', '--aug_views', 3))
    assert again['image_forwards'] == 0                                                # all of it cached
    fly = _detail(_train(tmp_path, toy, 'fly', '--augment', 'true'))
    assert (fly['images_encoded'], fly['image_forwards']) == (0, 4 * 12)               # 4 epochs x 12 training images
    assert set(fly['seconds_split']) == {'encode', 'train', 'other'}
    capsys.readouterr()
    assert train_main(_args(toy, tmp_path/'runs', 'bad', '--aug_views', '2')) == 2     # views without augmentation
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '--augment true' in err
