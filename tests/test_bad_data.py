"Bad input on the data side (issue 21): files that are not images, unreadable files in several splits, huge images."
import json, os, warnings
from pathlib import Path

import pytest
from PIL import Image, features

from vip.core import VipError
from vip.data import folder_dataset, load_image, load_splits, split_file_dataset

APPLE_DOUBLE = b'\x00\x05\x16\x07\x00\x02\x00\x00' + b'Mac OS X        ' + b'\x00' * 60   # what macOS writes as ._name


def _toy(root: Path, splits=('train', 'val', 'test'), n: int = 2) -> Path:
    "root/<split>/{a,b}/ with n small PNGs per class."
    for s in splits:
        for c in ('a', 'b'):
            d = root/s/c; d.mkdir(parents=True, exist_ok=True)
            for i in range(n): Image.new('RGB', (8, 8), (40 * i, 90, 160)).save(d/f'{c}{i}.png')
    return root


def _split_file(root: Path, path: Path, extra: dict | None = None) -> Path:
    "A split file listing every image of the class folders under `root` (plus `extra` entries per split)."
    data = {s: [[p.relative_to(root).as_posix(), 'ab'.index(p.parent.name), p.parent.name]
                for p in sorted((root/s).glob('*/*.png')) if not p.name.startswith('.')] for s in ('train', 'val', 'test')}
    for s, rows in (extra or {}).items(): data[s] += rows
    path.write_text(json.dumps(data)); return path


def _caught(f):
    "The result of `f()` and the warnings it raised (all of them, every time)."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        out = f()
    return out, w


# ---------------------------------------------------------------- 5: macOS companions and other dot-files
def test_apple_double_and_dot_files_are_ignored_and_counted(tmp_path):
    root = _toy(tmp_path, ('train',))
    (root/'train'/'a'/'._a0.png').write_bytes(APPLE_DOUBLE)
    (root/'train'/'a'/'.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1' + b'\x00' * 20)
    ds, w = _caught(lambda: folder_dataset(root, 'train'))
    assert ds.counts() == {'a': 2, 'b': 2}
    assert all(not p.name.startswith('.') for p, _ in ds.items)
    assert len(w) == 1 and '2 dot-file' in str(w[0].message) and '\n' not in str(w[0].message)
    assert (root/'train'/'a'/'._a0.png').exists()                    # nothing of the user's is touched


# ---------------------------------------------------------------- 7: every split checked, one error
def test_unreadable_images_of_all_splits_are_one_error(tmp_path):
    root = _toy(tmp_path)
    for rel in ('train/a/bad.png', 'test/b/bad.png', 'test/b/bad2.png'): (root/rel).write_bytes(b'garbage')
    with pytest.raises(VipError) as e: load_splits(root)
    msg = str(e.value)
    assert '3 unreadable image(s)' in msg and 'train: 1, val: 0, test: 2' in msg and '\n' not in msg
    assert str(root/'train'/'a'/'bad.png') in msg and str(root/'test'/'b'/'bad.png') in msg
    assert "on_error='skip'" in msg
    splits, w = _caught(lambda: load_splits(root, on_error='skip'))
    assert [len(d) for d in splits.values()] == [4, 4, 4] and len(w) == 1 and 'skipping 3' in str(w[0].message)


def test_unreadable_and_missing_images_of_a_split_file_are_one_error_each(tmp_path):
    root = _toy(tmp_path/'images')
    for rel in ('train/a/bad.png', 'test/b/bad.png'): (root/rel).write_bytes(b'garbage')
    f = _split_file(root, tmp_path/'split.json')
    with pytest.raises(VipError, match=r'2 unreadable image\(s\) in .*split\.json \(train: 1, val: 0, test: 1\)'):
        load_splits(root, split_file=f)
    g = _split_file(root, tmp_path/'split2.json', {'train': [['train/a/gone.png', 0, 'a']], 'test': [['test/b/gone.png', 1, 'b']]})
    with pytest.raises(VipError, match=r'2 of \d+ images listed in .*split2\.json \(train: 1 of \d+, val: 0 of \d+, test: 1 of \d+\) '
                                       r'are missing'):
        load_splits(root, split_file=g)
    with pytest.raises(VipError, match=r'1 of \d+ train images listed in .* are missing'):   # one split: as before
        split_file_dataset(g, root, 'train')


# ---------------------------------------------------------------- 8: Pillow's decompression-bomb limit
def test_huge_image_says_it_is_too_large_and_how_to_raise_the_limit(tmp_path, monkeypatch):
    root = _toy(tmp_path, ('train',))
    Image.new('RGB', (50, 50)).save(root/'train'/'a'/'huge.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)           # 2500 pixels is then over Pillow's hard limit (2 x 1000)
    with pytest.raises(VipError) as e: folder_dataset(root, 'train')
    msg = str(e.value)
    assert 'huge.png' in msg and 'too large' in msg and '2500 pixels' in msg and '\n' not in msg
    assert 'PIL.Image.MAX_IMAGE_PIXELS = None' in msg and 'downscale' in msg
    with pytest.raises(VipError, match=r'too large: 2500 pixels.*MAX_IMAGE_PIXELS = None'):
        load_image(root/'train'/'a'/'huge.png')


def test_large_image_is_read_without_pillows_two_line_warning(tmp_path, monkeypatch):
    root = _toy(tmp_path, ('train',))
    Image.new('RGB', (40, 40)).save(root/'train'/'a'/'large.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)           # 1600 pixels: Pillow warns, but reads it
    ds, w = _caught(lambda: folder_dataset(root, 'train'))
    img, w2 = _caught(lambda: load_image(root/'train'/'a'/'large.png'))
    assert ds.counts() == {'a': 3, 'b': 2} and img.size == (40, 40)
    assert not [x for x in w + w2 if issubclass(x.category, Image.DecompressionBombWarning)]


# ---------------------------------------------------------------- 9: webp, dangling links, stray files
@pytest.mark.skipif(not features.check('webp'), reason='this Pillow has no WebP support')
def test_webp_images_are_read(tmp_path):
    root = _toy(tmp_path, ('train',))
    Image.new('RGB', (8, 8), (200, 30, 30)).save(root/'train'/'b'/'b9.webp')
    ds, w = _caught(lambda: folder_dataset(root, 'train'))
    assert ds.counts() == {'a': 2, 'b': 3} and not w
    assert load_image(root/'train'/'b'/'b9.webp').mode == 'RGB'


def test_every_unused_file_is_counted_in_one_warning_line(tmp_path):
    root = _toy(tmp_path)
    d = root/'train'/'b'
    (d/'notes.txt').write_text('scanned on Monday'); (d/'scan.gif').write_bytes(b'\x00' * 132 + b'DICM')
    os.symlink(tmp_path/'nowhere.png', d/'gone.png')                 # a link whose target was deleted
    (d/'more').mkdir(); Image.new('RGB', (8, 8)).save(d/'more'/'b7.png')
    (d/'.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
    (root/'test'/'a'/'.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
    ds, w = _caught(lambda: folder_dataset(root, 'train'))
    assert ds.counts() == {'a': 2, 'b': 2} and len(w) == 1
    msg = str(w[0].message)
    assert 'left out 5 file(s)' in msg and '\n' not in msg
    for part in ('1 dot-file', '2 with an unknown extension', 'notes.txt', '1 dangling symlink', 'gone.png', '1 sub-folder'):
        assert part in msg, part
    splits, w = _caught(lambda: load_splits(root))                  # all splits: still one line, the counts summed
    assert len(w) == 1 and 'left out 6 file(s)' in str(w[0].message) and '2 dot-file' in str(w[0].message)


def test_a_valid_symlink_is_followed_and_nothing_is_said(tmp_path):
    root = _toy(tmp_path, ('train',))
    Image.new('RGB', (8, 8)).save(tmp_path/'elsewhere.png')
    os.symlink(tmp_path/'elsewhere.png', root/'train'/'a'/'a9.png')
    ds, w = _caught(lambda: folder_dataset(root, 'train'))
    assert ds.counts() == {'a': 3, 'b': 2} and not w


def test_a_class_of_only_stray_files_names_them(tmp_path):
    root = _toy(tmp_path, ('train',))
    for p in (root/'train'/'b').iterdir(): p.unlink()
    (root/'train'/'b'/'b0.gif').write_bytes(b'GIF89a'); (root/'train'/'b'/'._b0.gif').write_bytes(APPLE_DOUBLE)
    with pytest.raises(VipError, match=r'has no images .*2 other file\(s\).*b0\.gif') as e: folder_dataset(root, 'train')
    assert '\n' not in str(e.value)


# ---------------------------------------------------------------- a split file saved by Windows Notepad
def test_split_file_with_a_byte_order_mark_is_read(tmp_path):
    root = _toy(tmp_path/'images')
    f = _split_file(root, tmp_path/'split.json')
    f.write_text(f.read_text(), encoding='utf-8-sig')
    assert f.read_bytes()[:3] == b'\xef\xbb\xbf'
    assert len(split_file_dataset(f, root, 'train')) == 4


def test_a_label_that_is_not_a_number_is_a_one_line_error(tmp_path):
    root = _toy(tmp_path/'images')
    f = _split_file(root, tmp_path/'split.json')
    data = json.loads(f.read_text()); data['train'][0][1] = 'a'; f.write_text(json.dumps(data))
    with pytest.raises(VipError, match="label 'a' of 'a' in the split file is not a number"):
        load_splits(root, split_file=f)
