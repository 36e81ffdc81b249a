"Data loading as users meet it: mixed formats, 16-bit and RGBA images, corrupt files, empty classes, split files."
import json, warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vip.core import VipError
from vip.data import folder_dataset, load_splits, split_file_dataset, sample_k_shot, save_split, load_image


def _write_messy_folder(root: Path) -> Path:
    "train/ with a good JPEG, a 16-bit gray PNG, an RGBA PNG, a 16-bit TIFF, a BMP, a corrupt PNG and an empty class."
    d = root/'train'
    (d/'pneumonia').mkdir(parents=True); (d/'normal lung').mkdir(); (d/'empty class').mkdir()
    Image.new('RGB', (20, 16), (200, 10, 10)).save(d/'pneumonia'/'a.jpg')
    ramp = np.linspace(1000, 5000, 20 * 16).reshape(16, 20).astype(np.uint16)
    Image.fromarray(ramp).save(d/'pneumonia'/'xray16.png')
    Image.fromarray(ramp).save(d/'pneumonia'/'xray16.tif')
    Image.new('RGBA', (20, 16), (10, 200, 30, 128)).save(d/'normal lung'/'rgba.png')
    Image.new('L', (20, 16), 90).save(d/'normal lung'/'gray.bmp')
    (d/'normal lung'/'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)
    return root


def test_16bit_and_rgba_images_come_out_as_rgb_of_the_right_range(tmp_path):
    root = _write_messy_folder(tmp_path)
    for name in ('xray16.png', 'xray16.tif'):
        a = np.asarray(load_image(root/'train'/'pneumonia'/name))
        assert a.dtype == np.uint8 and a.shape == (16, 20, 3)
        assert a.min() == 0 and a.max() == 255            # scaled by the image's range, not clipped or divided
        assert (a[..., 0] == a[..., 1]).all()             # gray stays gray
        assert len(np.unique(a)) > 200                     # the contrast survives
    a = np.asarray(load_image(root/'train'/'normal lung'/'rgba.png'))
    assert a.shape == (16, 20, 3) and a[0, 0].tolist() == [10, 200, 30]
    assert np.asarray(load_image(root/'train'/'normal lung'/'gray.bmp'))[0, 0].tolist() == [90, 90, 90]


def test_empty_class_is_an_error_naming_the_folder(tmp_path):
    root = _write_messy_folder(tmp_path)
    with pytest.raises(VipError, match='empty class.*has no images'):
        folder_dataset(root, 'train')


def test_corrupt_file_is_listed_at_build_time_or_skipped(tmp_path):
    root = _write_messy_folder(tmp_path)
    (root/'train'/'empty class').rmdir()
    with pytest.raises(VipError, match=r"1 unreadable image\(s\).*corrupt\.png.*on_error='skip'"):
        folder_dataset(root, 'train')
    with pytest.warns(UserWarning, match='corrupt.png'):
        ds = folder_dataset(root, 'train', on_error='skip')
    assert ds.classes == ['normal lung', 'pneumonia']
    assert ds.counts() == {'normal lung': 2, 'pneumonia': 3}
    assert all(ds[i][0].mode == 'RGB' for i in range(len(ds)))   # every kept file decodes: no crash mid-epoch
    assert (root/'train'/'normal lung'/'corrupt.png').exists()  # nothing of the user's is deleted


def test_missing_folder_and_wrong_layout_are_clear(tmp_path):
    with pytest.raises(VipError, match='not found'):
        folder_dataset(tmp_path/'nope')
    (tmp_path/'images').mkdir()
    with pytest.raises(VipError, match="no 'train' folder"):
        folder_dataset(tmp_path)


def _fake_image_root(split: dict, root: Path) -> Path:
    "A stand-in image folder holding a tiny JPEG at every path a split file lists."
    img = Image.new('RGB', (8, 8), (120, 80, 60))
    for entries in split.values():
        for rel, _, _ in entries:
            p = root/rel; p.parent.mkdir(parents=True, exist_ok=True); img.save(p)
    return root


@pytest.mark.parametrize('name, classes, sizes', [
    ('derm7pt', ['melanoma', 'nevus'], (346, 161, 320)),
    ('pneumonia', ['normal lung', 'pneumonia'], (4710, 522, 624)),
])
def test_authors_split_files_load_against_an_image_root(reference, tmp_path, name, classes, sizes):
    split_file = reference/f'split_{name}.json'
    data = json.loads(split_file.read_text())
    root = _fake_image_root(data, tmp_path/'images')
    splits = load_splits(root, split_file=split_file, check=(name == 'derm7pt'))
    assert [len(splits[s]) for s in ('train', 'val', 'test')] == list(sizes)
    for s, ds in splits.items():
        assert ds.classes == classes
        assert Counter(ds.labels) == Counter(y for _, y, _ in data[s])
    # a 16-shot draw is reproducible and round-trips through a split file
    k16 = sample_k_shot(splits['train'], 16, seed=1)
    assert k16.counts() == {c: 16 for c in classes}
    assert k16.items == sample_k_shot(splits['train'], 16, seed=1).items
    f = save_split(tmp_path/'k16.json', {'train': k16})
    assert split_file_dataset(f, root, 'train').items == k16.items
    assert json.loads(f.read_text())['train'][0][0].startswith('train/')


def test_split_file_with_missing_images_is_one_error(reference, tmp_path):
    split_file = reference/'split_derm7pt.json'
    (tmp_path/'images').mkdir()
    with pytest.raises(VipError, match='346 of 346 train images .* are missing'):
        split_file_dataset(split_file, tmp_path/'images', 'train')
