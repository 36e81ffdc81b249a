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
    ('skin', ['melanoma', 'nevus'], (346, 161, 320)),
    ('pneumonia', ['normal lung', 'pneumonia'], (4710, 522, 624)),
])
def test_authors_split_files_load_against_an_image_root(reference, tmp_path, name, classes, sizes):
    split_file = reference/f'split_{name}.json'
    data = json.loads(split_file.read_text())
    root = _fake_image_root(data, tmp_path/'images')
    splits = load_splits(root, split_file=split_file, check=(name == 'skin'))
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
    split_file = reference/'split_skin.json'
    (tmp_path/'images').mkdir()
    with pytest.raises(VipError, match='346 of 346 train images .* are missing'):
        split_file_dataset(split_file, tmp_path/'images', 'train')


# ---------------------------------------------------------------- DICOM
def _write_dicom(path: Path, a: np.ndarray, photometric='MONOCHROME2', window=None, slope=None, frames=None) -> Path:
    "A grayscale uint16 DICOM file written with pydicom: optional window (centre, width), rescale slope, frame count."
    pydicom = pytest.importorskip('pydicom')
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset(); meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.7'; meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset(); ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = a.shape[-2:]; ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16; ds.HighBit, ds.PixelRepresentation = 15, 0
    if window: ds.WindowCenter, ds.WindowWidth = window
    if slope: ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    if frames: ds.NumberOfFrames = frames
    ds.PixelData = a.astype(np.uint16).tobytes(); ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_is_read_with_its_window_inverted_for_monochrome1_else_by_its_range(tmp_path):
    a = np.array([[100, 150, 300], [500, 200, 250]], dtype=np.uint16)
    gray = lambda p: np.asarray(load_image(p))[..., 0]
    plain = gray(_write_dicom(tmp_path/'plain.dcm', a))
    assert plain.min() == 0 and plain.max() == 255 and plain[0, 1] == round(50 / 400 * 255)   # the image's range
    film = gray(_write_dicom(tmp_path/'film.dcm', a, 'MONOCHROME1')).astype(int)
    assert np.abs(film - (255 - plain.astype(int))).max() <= 1 and film[1, 0] == 0                # inverted
    win = gray(_write_dicom(tmp_path/'win.dcm', a, window=(200.5, 201)))                        # window 100..300
    assert win.tolist() == [[0, 64, 255], [255, 128, 191]]
    assert (gray(_write_dicom(tmp_path/'slope.dcm', a, window=(400.5, 401), slope=2)) == win).all()  # rescale first
    assert np.asarray(load_image(tmp_path/'win.dcm')).shape == (2, 3, 3)


def test_pydicoms_own_samples_load_and_bad_ones_are_listed_per_file_at_build_time(tmp_path):
    pytest.importorskip('pydicom')
    from pydicom.data import get_testdata_file
    import shutil
    mr = np.asarray(load_image(get_testdata_file('MR_small.dcm')))         # 64 x 64, window 600 / 1600 stored
    assert mr.shape == (64, 64, 3) and mr.max() == 255 and mr.min() > 0     # the window, not the range, decides
    assert load_image(get_testdata_file('CT_small.dcm')).size == (128, 128)
    root = tmp_path/'data'
    for c, names in (('a', ['CT_small.dcm', 'MR_small.dcm']), ('b', ['SC_rgb_rle_2frame.dcm', 'JPEGLSNearLossless_08.dcm'])):
        (root/'train'/c).mkdir(parents=True)
        for n in names: shutil.copy(get_testdata_file(n), root/'train'/c/n)
    _write_dicom(root/'train'/'b'/'frames.dcm', np.zeros((2, 4, 4)), frames=2)
    with pytest.raises(VipError) as e:
        folder_dataset(root, 'train')
    msg = str(e.value)
    assert '3 unreadable image(s)' in msg and '\n' not in msg
    assert 'multi-frame DICOM (2 frames)' in msg and 'no installed decoder reads it' in msg
    with pytest.warns(UserWarning, match='skipping 3'):
        assert folder_dataset(root, 'train', on_error='skip').counts() == {'a': 2, 'b': 0}


def test_dicom_without_pydicom_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    f = _write_dicom(tmp_path/'x.dcm', np.ones((4, 4)))
    monkeypatch.setitem(__import__('sys').modules, 'pydicom', None)        # as if it were not installed
    with pytest.raises(VipError, match=r'needs pydicom: pip install "vip\[dicom\]"'):
        load_image(f)
