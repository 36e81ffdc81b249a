"""The paper's datasets as people download them (issue 14): stand-in trees of tiny JPEGs under the real names and
layouts, the authors' split files read from the reference folder beside the checkout (never copied here)."""
import contextlib, csv, io, json, os, time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vip.cli import data_main, train_main
from vip.core import VipError
from vip.data import load_splits, read_split_file, split_entries
from vip.datasets import CHECKLIST, check_split, derm7pt_class, patient, prepare_pneumonia

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO/'data_samples'/'symptoms'


# ---------------------------------------------------------------- stand-in downloads
def _jpeg(path: Path) -> Path:
    "One tiny JPEG, the source every stand-in file is a hard link of (fast: no bytes written per file)."
    buf = io.BytesIO(); Image.new('RGB', (8, 8), (120, 120, 120)).save(buf, 'JPEG')
    path.write_bytes(buf.getvalue()); return path


def _tree(root: Path, rels, src: Path) -> Path:
    "A stand-in download with the tiny JPEG `src` at every relative path of `rels`."
    for d in sorted({(root/r).parent for r in rels}): d.mkdir(parents=True, exist_ok=True)
    for r in rels: os.link(src, root/r)
    return root


def _v3_rels(split: dict, base='ZhangLabData/CellData/chest_xray') -> list[str]:
    "Where version 3 of Kermany's release keeps each image of an authors'-layout split (val comes from train/)."
    return [f"{base}/{'test' if rel.startswith('test/') else 'train'}/{'NORMAL' if c == 'normal lung' else 'PNEUMONIA'}/"
            f"{Path(rel).name}" for rows in split.values() for rel, _, c in rows]


def _v2_rels(n_train=12, n_test=6) -> list[str]:
    "Kaggle's version 2: IM-/NORMAL2-IM-/person names, a 16-image val/, a nested second copy and __MACOSX."
    rels = []
    for s, n in (('train', n_train), ('val', 8), ('test', n_test)):
        for i in range(n):
            k = 1000 * len(s) + i // 2
            rels += [f'chest_xray/{s}/NORMAL/{"NORMAL2-" if i % 3 == 0 else ""}IM-{k:04d}-{i % 2 + 1:04d}.jpeg',
                     f'chest_xray/{s}/PNEUMONIA/person{k}_{"virus" if i % 3 else "bacteria"}_{i}.jpeg']
    return rels + ['chest_xray/chest_xray/' + r.split('/', 1)[1] for r in rels[:4]]


def _run(argv, fn=data_main):
    "(exit status, stdout, stderr) of a command."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = fn(argv)
    return code, out.getvalue().strip(), err.getvalue().strip()


@pytest.fixture(scope='session')
def pneumonia_split():
    "The authors' split_pneumonia.json in the reference folder (skip when absent)."
    f = Path(__file__).resolve().parents[2]/'shared'/'reference'/'split_pneumonia.json'
    if not f.is_file(): pytest.skip(f'no reference split at {f}')
    return f


@pytest.fixture(scope='session')
def v3_tree(tmp_path_factory, pneumonia_split):
    "Version 3 as unpacked from Mendeley's ZhangLabData.zip, with all 5,856 names of the authors' split."
    root = tmp_path_factory.mktemp('mendeley')
    _tree(root, _v3_rels(json.loads(pneumonia_split.read_text())), _jpeg(root.parent/'mendeley.jpg'))
    _tree(root, ['ZhangLabData/CellData/OCT/train/NORMAL/NORMAL-1001666-1.jpeg'], root.parent/'mendeley.jpg')  # OCT beside it
    return root


# ---------------------------------------------------------------- Kermany, version 3, the authors' split
def test_v3_with_the_authors_split_resolves_4710_522_624(v3_tree, pneumonia_split, tmp_path):
    out = tmp_path/'pneumonia.json'
    t0 = time.perf_counter()
    code, line, err = _run(['pneumonia', str(v3_tree), '--split', str(pneumonia_split), '-o', str(out)])
    seconds = time.perf_counter() - t0
    print(f'\nvip_data pneumonia on the 5,856-name tree: {seconds:.2f} s\n{line}')
    assert (code, err) == (0, '') and len(line.splitlines()) == 1
    assert 'train 4710 / val 522 / test 624' in line and 'classes normal lung, pneumonia' in line
    data = json.loads(out.read_text())
    theirs = json.loads(pneumonia_split.read_text())
    for s in ('train', 'val', 'test'):                 # same images, labels and classes, real paths
        assert [(Path(p).name, y, c) for p, y, c in data[s]] == [(Path(p).name, y, c) for p, y, c in theirs[s]]
        assert all((v3_tree/p).is_file() for p, _, _ in data[s])
    assert data['val'][0][0].startswith('ZhangLabData/CellData/chest_xray/train/NORMAL/')
    assert data['_about']['release'] == 'v3'
    splits = load_splits(v3_tree, out, check=False)    # what vip_train reads, class names from the split
    assert [len(splits[s]) for s in ('train', 'val', 'test')] == [4710, 522, 624]
    assert splits['test'].classes == ['normal lung', 'pneumonia'] and splits['test'].counts() == {'normal lung': 234, 'pneumonia': 390}


def test_the_authors_split_also_loads_directly_against_the_download(v3_tree, pneumonia_split):
    "Resolution by file name is in load_splits itself: the authors' file works on the unpacked download as it is."
    splits = load_splits(v3_tree, pneumonia_split, check=False)
    assert [len(splits[s]) for s in ('train', 'val', 'test')] == [4710, 522, 624]
    assert splits['val'].items[0][0].parent.name == 'NORMAL'


def test_check_on_the_v3_tree_is_clean_and_writes_nothing(v3_tree, pneumonia_split):
    before = sorted(p for p in v3_tree.rglob('*'))
    code, report, _ = _run(['check', str(v3_tree), '--split', str(pneumonia_split)])
    assert code == 0 and report.splitlines()[0] == 'train: 4710 listed, normal lung 1215, pneumonia 3495'
    assert 'missing 0, ambiguous 0, unreadable 0, names in more than one split 0' in report and 'ok:' in report
    assert sorted(p for p in v3_tree.rglob('*')) == before


# ---------------------------------------------------------------- Kermany, version 2 (Kaggle)
def test_v2_without_a_split_keeps_the_test_set_and_carves_a_stated_validation_set(tmp_path):
    root = _tree(tmp_path/'kaggle', _v2_rels(), _jpeg(tmp_path/'x.jpg'))
    out = tmp_path/'out.json'
    code, line, err = _run(['pneumonia', str(root), '-o', str(out), '--val_fraction', '0.25', '--seed', '3'])
    print('\n' + line)
    assert (code, err) == (0, '') and len(line.splitlines()) == 1
    assert "not the paper's split" in line and '25% of each class' in line and 'seed 3' in line
    data = json.loads(out.read_text())
    test = sorted(p.relative_to(root).as_posix() for p in (root/'chest_xray'/'test').rglob('*.jpeg'))
    assert sorted(e[0] for e in data['test']) == test                                     # test untouched
    pool = sorted(p.relative_to(root).as_posix() for s in ('train', 'val') for p in (root/'chest_xray'/s).rglob('*.jpeg'))
    assert sorted(e[0] for e in data['train'] + data['val']) == pool                     # train + val/ = the pool
    val = Counter(e[2] for e in data['val'])                                            # 25% of 20 per class = 5,
    assert set(val) == {'normal lung', 'pneumonia'} and all(5 <= n <= 6 for n in val.values())   # in whole patients
    who = lambda s: {patient(Path(e[0]).name) for e in data[s]}
    assert not who('train') & who('val')
    assert not any('chest_xray/chest_xray' in e[0] for v in split_entries(data).values() for e in v)
    assert data['_about']['ignored_copies'] == ['chest_xray/chest_xray']
    assert json.loads(out.read_text()) == prepare_pneumonia(root, None, 0.25, 3)         # seeded: the same again


def test_v2_with_the_authors_split_is_exit_2_naming_version_3(tmp_path, pneumonia_split):
    root = _tree(tmp_path/'kaggle', _v2_rels(), _jpeg(tmp_path/'x.jpg'))
    code, out, err = _run(['pneumonia', str(root), '--split', str(pneumonia_split), '-o', str(tmp_path/'o.json')])
    print('\n' + err)
    assert code == 2 and out == '' and len(err.splitlines()) == 1
    assert 'version 3' in err and '10.17632/rscbjbr9sj.3' in err and 'version 2' in err
    assert not (tmp_path/'o.json').exists()


# ---------------------------------------------------------------- Derm7pt
_MEL = ('melanoma', 'melanoma (in situ)', 'melanoma (less than 0.76 mm)', 'melanoma (0.76 to 1.5 mm)',
        'melanoma (more than 1.5 mm)', 'melanoma metastasis')
_NEV = ('clark nevus', 'blue nevus', 'combined nevus', 'congenital nevus', 'dermal nevus', 'recurrent nevus',
        'reed or spitz nevus')
_OTHER = ('basal cell carcinoma', 'seborrheic keratosis', 'dermatofibroma', 'lentigo', 'melanosis', 'miscellaneous',
          'vascular lesion')
_COLUMNS = ['case_num', 'diagnosis', 'seven_point_score', *CHECKLIST, 'level_of_diagnostic_difficulty', 'elevation',
            'location', 'sex', 'clinic', 'derm', 'management']


def _derm7pt(root: Path, names_dx: list[tuple[str, str]], src: Path, columns=_COLUMNS) -> Path:
    "A stand-in release_v0: images/<3 letters>/<name>, a meta.csv in the release's columns, and its index files."
    rel = root/'derm7pt'/'release_v0'
    _tree(rel/'images', [f'{n[:3]}/{n}' for n, _ in names_dx], src)
    (rel/'meta').mkdir()
    with open(rel/'meta'/'meta.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, columns, extrasaction='ignore'); w.writeheader()
        for i, (n, d) in enumerate(names_dx):
            w.writerow(dict(case_num=i + 1, diagnosis=d, seven_point_score=i % 7, pigment_network=('typical', 'atypical')[i % 2],
                            streaks='absent', pigmentation='absent', regression_structures='absent',
                            dots_and_globules=('absent', 'regular', 'irregular')[i % 3], blue_whitish_veil='absent',
                            vascular_structures='absent', clinic=f'{n[:3]}/{n[:-4]}c.jpg', derm=f'{n[:3]}/{n}'))
    for s, k in (('train', 0), ('valid', 1), ('test', 2)):
        (rel/'meta'/f'{s}_indexes.csv').write_text('indexes\n' + ''.join(f'{i}\n' for i in range(k, len(names_dx), 3)))
    return root/'derm7pt'


@pytest.fixture
def skin_split():
    f = Path(__file__).resolve().parents[2]/'shared'/'reference'/'split_skin.json'
    if not f.is_file(): pytest.skip(f'no reference split at {f}')
    return f


def _release_cases(skin_split: Path) -> list[tuple[str, str]]:
    "The 827 images of the authors' split with melanoma / nevus diagnoses, and 184 other cases: 1,011 as in the release."
    rows = [r for v in json.loads(skin_split.read_text()).values() for r in v]
    mel = [Path(p).name for p, _, c in rows if c == 'melanoma']; nev = [Path(p).name for p, _, c in rows if c == 'nevus']
    cases = [(n, _MEL[i % len(_MEL)]) for i, n in enumerate(mel)] + [(n, _NEV[i % len(_NEV)]) for i, n in enumerate(nev)]
    cases += [(f'Zz{i:03d}.jpg', _OTHER[i % len(_OTHER)]) for i in range(184)]
    return sorted(cases)


def test_derm7pt_paper_classes_with_the_authors_split_resolve_346_161_320_with_checklists(tmp_path, skin_split):
    cases = _release_cases(skin_split)
    assert (len(cases), sum(d in _MEL for _, d in cases), sum(d in _NEV for _, d in cases)) == (1011, 252, 575)
    root = _derm7pt(tmp_path, cases, _jpeg(tmp_path/'x.jpg'))
    out = tmp_path/'skin.json'
    code, line, err = _run(['derm7pt', str(root), '--split', str(skin_split), '-o', str(out)])
    print('\n' + line)
    assert (code, err) == (0, '') and 'train 346 / val 161 / test 320' in line and 'classes melanoma, nevus' in line
    data = read_split_file(out)                                   # extra keys do not get in the way of readers
    assert data['train'][0] == ['release_v0/images/Aal/Aal002bis.jpg', 0, 'melanoma']
    check = data['_checklist']
    assert len(check) == 827 and set(check[data['test'][0][0]]) == {'diagnosis', *CHECKLIST}
    dx = dict(cases)
    assert all(derm7pt_class(check[p]['diagnosis']) == c for v in split_entries(data).values() for p, _, c in v)
    assert all(check[p]['diagnosis'] == dx[Path(p).name] for p in check)
    splits = load_splits(root, out, check=False)
    assert [len(splits[s]) for s in ('train', 'val', 'test')] == [346, 161, 320]
    assert splits['test'].counts() == {'melanoma': 101, 'nevus': 219}


def test_derm7pt_five_classes_from_the_release_index_files(tmp_path, skin_split):
    cases = _release_cases(skin_split)
    root = _derm7pt(tmp_path, cases, _jpeg(tmp_path/'x.jpg'))
    out = tmp_path/'five.json'
    code, line, err = _run(['derm7pt', str(root), '--classes', 'five', '-o', str(out)])
    print('\n' + line)
    assert code == 0 and "the release's train/valid/test index files" in line
    data = json.loads(out.read_text())
    five = ['basal cell carcinoma', 'nevus', 'melanoma', 'miscellaneous', 'seborrheic keratosis']
    for s, k in (('train', 0), ('val', 1), ('test', 2)):          # every case of its index file, grouped
        want = Counter(derm7pt_class(d, 'five') for _, d in cases[k::3])
        assert Counter(e[2] for e in data[s]) == want and all(e[1] == five.index(e[2]) for e in data[s])
    assert sum(map(len, split_entries(data).values())) == 1011 and len(data['_checklist']) == 1011
    assert load_splits(root, out, check=False)['train'].classes == five


# ---------------------------------------------------------------- duplicates, missing files, check, links
def _small_v3(tmp_path, pneumonia_split, n=6):
    "A version 3 tree of `n` images of each split of the authors' file, and a split file of just those."
    sub = {s: v[:n // 2] + v[-(n // 2):] for s, v in json.loads(pneumonia_split.read_text()).items()}   # both classes
    (tmp_path/'sub.json').write_text(json.dumps(sub))
    return _tree(tmp_path/'v3', _v3_rels(sub, 'chest_xray'), _jpeg(tmp_path/'x.jpg')), tmp_path/'sub.json', sub


def test_a_duplicate_name_and_a_missing_file_are_one_error_listing_both(tmp_path, pneumonia_split):
    root, split, sub = _small_v3(tmp_path, pneumonia_split)
    dup = Path(sub['test'][0][0]).name
    os.link(tmp_path/'x.jpg', root/'chest_xray'/'train'/'NORMAL'/dup)                # the same name twice
    gone = Path(sub['train'][1][0]).name
    (root/'chest_xray'/'train'/'NORMAL'/gone).unlink()                               # and one file not there
    code, out, err = _run(['pneumonia', str(root), '--split', str(split), '-o', str(tmp_path/'o.json')])
    print('\n' + err)
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path/'o.json').exists()
    assert '2 of 18 images listed in' in err and '(train: 1 of 6, val: 0 of 6, test: 1 of 6)' in err
    assert f'1 is missing' in err and gone in err and '1 has a file name found more than once' in err and dup in err
    with pytest.raises(VipError, match='cannot be placed'):                          # the library says the same
        load_splits(root, split, check=False)


def test_only_missing_files_and_check_reports_them_with_the_fix(tmp_path, pneumonia_split):
    root, split, sub = _small_v3(tmp_path, pneumonia_split)
    for e in sub['val'][:4]: next((root/'chest_xray').rglob(Path(e[0]).name)).unlink()
    code, _, err = _run(['pneumonia', str(root), '--split', str(split), '-o', str(tmp_path/'o.json')])
    assert code == 2 and '4 of 18 images' in err and 'are missing under' in err and 'and 1 more' in err
    code, report, _ = _run(['check', str(root), '--split', str(split)])
    print('\n' + report)
    assert code == 1 and 'missing 4, ambiguous 0' in report and report.splitlines()[-1].startswith('fix: 4 of 18 images')
    leak = dict(sub, test=sub['test'] + [sub['train'][0]])                           # one image in train and test
    (tmp_path/'leak.json').write_text(json.dumps(leak))
    r = check_split(tmp_path/'v3', tmp_path/'leak.json')
    assert list(r['in_two_splits']) == [Path(sub['train'][0][0]).name]


def test_links_into_the_authors_layout(tmp_path, pneumonia_split):
    root, split, sub = _small_v3(tmp_path, pneumonia_split)
    code, line, _ = _run(['pneumonia', str(root), '--split', str(split), '-o', str(tmp_path/'o.json'), '--links', str(tmp_path/'L')])
    assert code == 0 and '18 links in' in line
    for s, rows in sub.items():                                                      # their paths, our files
        assert all((tmp_path/'L'/p).is_symlink() and (tmp_path/'L'/p).resolve().parent.parent.parent.name == 'chest_xray'
                   for p, _, _ in rows)
    assert len(load_splits(tmp_path/'L', split, check=False)['val']) == 6           # their file, as is, on the links


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written
@pytest.mark.parametrize('case', ['neither release', 'derm7pt without meta.csv', 'meta.csv lacks columns', 'split not JSON',
                                  'output exists', 'classes with split'])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    src = _jpeg(tmp_path/'x.jpg')
    out = tmp_path/'o.json'
    if case == 'neither release':
        root = _tree(tmp_path/'r', ['photos/train/cats/a.jpeg'], src); argv = ['pneumonia', str(root)]
        want = 'holds no Kermany chest X-ray folder'
    elif case == 'derm7pt without meta.csv':
        root = _tree(tmp_path/'r', ['chest_xray/train/NORMAL/IM-0001-0001.jpeg'], src); argv = ['derm7pt', str(root)]
        want = 'holds no Derm7pt release'
    elif case == 'meta.csv lacks columns':
        root = _derm7pt(tmp_path, [('Aal002.jpg', 'melanoma')], src, [c for c in _COLUMNS if c not in ('diagnosis', 'streaks')])
        argv, want = ['derm7pt', str(root)], 'meta.csv has no column(s) diagnosis, streaks'
    elif case == 'split not JSON':
        root = _tree(tmp_path/'r', _v2_rels(4, 2), src); (tmp_path/'s.json').write_text('{"train": [[')
        argv, want = ['pneumonia', str(root), '--split', str(tmp_path/'s.json')], 'is not valid JSON'
    elif case == 'output exists':
        root = _tree(tmp_path/'r', _v2_rels(4, 2), src); out.write_text('mine')
        argv, want = ['pneumonia', str(root)], 'already exists'
    else:
        root = _derm7pt(tmp_path, [('Aal002.jpg', 'melanoma')], src); (tmp_path/'s.json').write_text('{"train": []}')
        argv, want = ['derm7pt', str(root), '--split', str(tmp_path/'s.json'), '--classes', 'five'], '--classes goes without --split'
    code, stdout, err = _run(argv + ['-o', str(out)])
    assert code == 2 and stdout == '' and len(err.splitlines()) == 1 and want in err, err
    assert (out.read_text() == 'mine') if case == 'output exists' else not out.exists()


# ---------------------------------------------------------------- vip_train reads what vip_data wrote
@pytest.mark.parametrize('dataset', ['pneumonia v2', 'derm7pt'])
def test_vip_train_runs_on_a_prepared_stand_in(tmp_path, dataset):
    "Kaggle's version 2 (without a split) and a small Derm7pt release (paper classes), pocket CLIP, one epoch."
    src = _jpeg(tmp_path/'x.jpg')
    if dataset == 'derm7pt':
        cases = [(f'{p}{i:03d}.jpg', d) for i, (p, d) in enumerate([('Aal', 'melanoma'), ('Bcl', 'clark nevus')] * 15)]
        root, symptoms, modality = _derm7pt(tmp_path, cases, src), SAMPLES/'derm7pt.json', 'dermoscopic image'
        prep = ['derm7pt', str(root)]
    else:
        root, symptoms, modality = _tree(tmp_path/'kaggle', _v2_rels(), src), SAMPLES/'pneumonia.json', 'chest X-ray'
        prep = ['pneumonia', str(root)]
    assert _run(prep + ['-o', str(tmp_path/'split.json')])[0] == 0
    code, out, err = _run(['--data', str(root), '--split_file', str(tmp_path/'split.json'), '--backbone', 'pocket',
                           '--symptoms', str(symptoms), '--modality', modality, '--epochs', '1', '--workers', '0',
                           '--feature_cache', 'none', '--out', str(tmp_path/'runs'), '--quiet'], train_main)
    assert code == 0, err
    assert any(l.split()[:1] == ['vip'] for l in out.splitlines()) and 'run folder' in out   # ViP trained and tested
    run = next((tmp_path/'runs').iterdir())
    assert json.loads((run/'config.json').read_text())['split_file'] == str(tmp_path/'split.json')
