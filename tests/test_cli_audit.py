"""Tests of `vip_symptoms audit` and `vip_symptoms differential` (vip.cli), run in-process.

The audit runs the pocket CLIP on 16 training images per class of the bundled synthetic derm-synth set (teaching
material, not medical data); the differential questions go through the real `openai` client to the scripted
`FakeLLMServer` on 127.0.0.1. No test needs a network.
"""
import json

import pytest

from vip.audit import audit_folder, audit_scores, load_audit, save_audit
from vip.clip import DATA_SAMPLES, POCKET, load_clip
from vip.cli import symptoms_main
from vip.llm_server import FakeLLMServer
from vip.symptoms import load_symptoms, read_symptom_file

PLAIN = DATA_SAMPLES/'symptoms'/'derm-synth.json'     # hand-written plain-word symptoms; the file records no modality
CLASSES = ['melanoma', 'nevus']
AUDIT = ['audit', '--data', 'derm-synth', '--symptoms', PLAIN, '--k', 16]


def cli(capsys, *argv):
    "Run `vip_symptoms` in-process: (exit status, stdout, stderr)."
    try: code = symptoms_main([str(a) for a in argv])
    except SystemExit as e: code = e.code              # argparse: a bad option
    out, err = capsys.readouterr()
    return code, out, err


def one_line_failure(result):
    "Exit status 2, nothing on stdout, one line on stderr naming the command."
    code, out, err = result
    assert code == 2 and out == '' and len(err.strip().splitlines()) == 1 and err.startswith('vip_symptoms'), result
    return err


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    "One audit report (and picture) written by the command, shared by the tests that read it."
    d = tmp_path_factory.mktemp('audit')
    code = symptoms_main([str(a) for a in AUDIT] + ['--out', str(d/'audit.json'), '--plot', str(d/'audit.png')])
    assert code == 0
    return d/'audit.json'


@pytest.fixture
def server():
    with FakeLLMServer() as s: yield s


def llm(server, tmp_path):
    return ['--model', 'fake-llm', '--base-url', server.base_url, '--cache', tmp_path/'cache', '--clip', 'none',
            '--timeout', 2, '--retries', 0]


# ---------------------------------------------------------------- vip_symptoms audit
def test_audit_writes_a_report_that_load_audit_reads_with_the_numbers_of_audit_folder(report):
    a = load_audit(report)
    direct = audit_folder(load_clip(POCKET, device='cpu'), DATA_SAMPLES/'derm-synth', PLAIN, k=16, seed=1)
    assert a.classes == CLASSES and a.counts == [16, 16] and a.symptoms == direct.symptoms
    assert a.auc == pytest.approx(direct.auc, abs=1e-4) and a.confusion == direct.confusion
    assert a.info == {'clip': direct.info['clip'], 'data': 'derm-synth', 'split': 'train', 'k': 16, 'seed': 1,
                      'symptom_file': 'derm-synth.json'}
    d = json.loads(report.read_text())
    assert d['format'] == 'vip-symptom-audit' and len(d['symptoms']) == 8
    assert (report.parent/'audit.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_audit_prints_the_table_and_the_next_command(capsys, tmp_path):
    code, out, err = cli(capsys, *AUDIT, '--k', 4, '--seed', 2, '--min_auc', 0.99, '--out', tmp_path/'a.json')
    assert (code, err) == (0, '')
    lines = out.splitlines()
    assert lines[0].split()[:4] == ['#', 'class', 'symptom', 'AUC'] and len(lines) == 2 + 8 + 1 + 1
    assert '8 symptoms' in lines[10] and 'on 8 images' in lines[10]          # --k 4 per class
    a = load_audit(tmp_path/'a.json')
    assert (a.min_auc, a.info['k'], a.info['seed'], a.counts) == (0.99, 4, 2, [4, 4])
    assert len(a.weak) == sum(x < 0.99 for x in a.auc) and len(a.weak) >= 7      # the threshold went through
    assert a.confusion == [[4, 0], [0, 4]] and lines[-1] == f'wrote {tmp_path/"a.json"} (no two classes were confused)'
    code, out, _ = cli(capsys, *AUDIT, '--out', tmp_path/'b.json')              # 16 per class: confused
    assert out.splitlines()[-1] == (f'wrote {tmp_path/"b.json"} (most confused: melanoma and nevus; ask about them with: '
                                    f'vip_symptoms differential --symptoms {PLAIN} --audit {tmp_path/"b.json"} -o NEW.json)')


def test_audit_without_out_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, *AUDIT)
    assert code == 0 and 'zero-shot accuracy' in out and list(tmp_path.iterdir()) == []


def test_audit_refuses_to_overwrite_without_force(capsys, tmp_path):
    for name in ('a.json', 'a.png'): (tmp_path/name).write_text('mine')
    err = one_line_failure(cli(capsys, *AUDIT, '--out', tmp_path/'a.json'))
    assert 'already exists: pass --force' in err and '--out' in err
    err = one_line_failure(cli(capsys, *AUDIT, '--out', tmp_path/'b.json', '--plot', tmp_path/'a.png'))
    assert 'already exists' in err and '--plot' in err
    assert not (tmp_path/'b.json').exists()                                  # refused before anything was written
    assert [(tmp_path/n).read_text() for n in ('a.json', 'a.png')] == ['mine', 'mine']
    code, _, _ = cli(capsys, *AUDIT, '--out', tmp_path/'a.json', '--plot', tmp_path/'a.png', '--force')
    assert code == 0 and load_audit(tmp_path/'a.json').counts == [16, 16]
    assert (tmp_path/'a.png').read_bytes()[:4] == b'\x89PNG'


def test_audit_never_writes_over_the_symptom_file(capsys, tmp_path):
    mine = tmp_path/'symptoms.json'
    mine.write_bytes(PLAIN.read_bytes())
    args = ['audit', '--data', 'derm-synth', '--symptoms', mine, '--k', 2]
    err = one_line_failure(cli(capsys, *args, '--out', mine, '--force'))
    assert 'never written over' in err and mine.read_bytes() == PLAIN.read_bytes()


@pytest.mark.parametrize('extra, words', [
    (['--data', 'nowhere-to-be-found'], 'data folder nowhere-to-be-found not found'),
    (['--split', 'holdout'], "no 'holdout' folder"),
    (['--symptoms', 'missing.json'], 'symptom file missing.json not found'),
    (['--k', 0], '--k 0'),
    (['--min_auc', 60], 'an AUC lies between 0 and 1'),
    (['--max_corr', 2], 'correlation lies between -1 and 1'),
    (['--plot', 'audit.txt'], 'end the file name with one of'),
    (['--backbone', 'ViT-B/17'], "unknown backbone 'ViT-B/17'"),
    (['--out', 'same.png', '--plot', 'same.png'], 'name the same file'),
])
def test_audit_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    argv = [*AUDIT, '--out', 'report.json'] + [str(x) for x in extra]     # later options win
    err = one_line_failure(cli(capsys, *argv))
    assert words in err, err
    assert list(tmp_path.iterdir()) == []


def test_audit_bad_data_folder_layout(capsys, tmp_path):
    (tmp_path/'flat'/'melanoma').mkdir(parents=True)                       # no train/ split folder
    err = one_line_failure(cli(capsys, 'audit', '--data', tmp_path/'flat', '--symptoms', PLAIN, '--out', tmp_path/'r.json'))
    assert "no 'train' folder" in err and not (tmp_path/'r.json').exists()


# ---------------------------------------------------------------- vip_symptoms differential
def test_differential_from_an_audit_writes_a_valid_file_that_records_the_round(capsys, tmp_path, server, report):
    out = tmp_path/'round1.json'
    code, stdout, err = cli(capsys, 'differential', '--symptoms', PLAIN, '--audit', report, '--modality',
                            'dermoscopic image', *llm(server, tmp_path), '-o', out)
    assert (code, err) == (0, '') and stdout.startswith(f'wrote {out}: round 1 about melanoma and nevus')
    symptoms = load_symptoms(out, CLASSES)
    assert [len(v) for v in symptoms.values()] == [6, 6]                   # --add 2 per class, without a CLIP
    assert {c: v[:4] for c, v in symptoms.items()} == load_symptoms(PLAIN, CLASSES)   # the old ones stay, first
    _, meta = read_symptom_file(out)
    rnd = meta['differential'][0]
    assert (rnd['round'], rnd['pairs'], rnd['model'], rnd['k'], rnd['add']) == (1, [CLASSES], 'fake-llm', 4, 2)
    assert rnd['source'] == 'audit audit.json of derm-synth.json on derm-synth (train)'
    assert rnd['added'] == {c: symptoms[c][4:] for c in CLASSES} and server.requests == 1
    assert meta['format'] == 'vip-symptoms' and meta['source'] == read_symptom_file(PLAIN)[1]['source']


def test_differential_with_pairs_given_and_a_second_round_from_the_cache(capsys, tmp_path, server):
    first, second = tmp_path/'r1.json', tmp_path/'r2.json'
    base = ['differential', '--modality', 'dermoscopic image', *llm(server, tmp_path)]
    assert cli(capsys, *base, '--symptoms', PLAIN, '--pair', 'nevus', 'melanoma', '--add', 1, '-k', 3, '-o', first)[0] == 0
    code, out, _ = cli(capsys, *base, '--symptoms', first, '--pair', 'melanoma', 'nevus', '-o', second)
    assert code == 0 and '(given (--pair))' in out
    _, meta = read_symptom_file(second)
    assert [(r['round'], r['pairs'], r['source'], r['add'], r['k']) for r in meta['differential']] == [
        (1, [['nevus', 'melanoma']], 'given (--pair)', 1, 3), (2, [CLASSES], 'given (--pair)', 2, 4)]
    assert [len(v) for v in load_symptoms(first, CLASSES).values()] == [5, 5]
    assert [len(v) for v in load_symptoms(second, CLASSES).values()] == [7, 7]
    # the same first round again: answered from the cache, the same bytes
    again = tmp_path/'r1-again.json'
    requests = server.requests
    assert cli(capsys, *base, '--symptoms', PLAIN, '--pair', 'nevus', 'melanoma', '--add', 1, '-k', 3, '-o', again)[0] == 0
    assert server.requests == requests and again.read_bytes() == first.read_bytes()


def test_differential_refuses_to_overwrite(capsys, tmp_path, server, report):
    mine = tmp_path/'mine.json'
    mine.write_bytes(PLAIN.read_bytes())
    base = ['differential', '--audit', report, '--modality', 'dermoscopic image', *llm(server, tmp_path)]
    (tmp_path/'taken.json').write_text('{"keep": "me"}')
    assert 'already exists: pass --force' in one_line_failure(cli(capsys, *base, '--symptoms', mine, '-o', tmp_path/'taken.json'))
    for target in (mine, report):                                          # the inputs: not even with --force
        assert 'never written over' in one_line_failure(cli(capsys, *base, '--symptoms', mine, '-o', target, '--force'))
    assert mine.read_bytes() == PLAIN.read_bytes() and load_audit(report).counts == [16, 16]
    assert (tmp_path/'taken.json').read_text() == '{"keep": "me"}' and server.requests == 0
    assert cli(capsys, *base, '--symptoms', mine, '-o', tmp_path/'taken.json', '--force')[0] == 0
    assert len(load_symptoms(tmp_path/'taken.json', CLASSES)['nevus']) == 6


def test_differential_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, server, report):
    out = tmp_path/'out.json'
    base = ['differential', '--symptoms', PLAIN, *llm(server, tmp_path), '-o', out]
    clean = audit_scores([[1.0, 0.0], [0.0, 1.0]], [0, 1], {'melanoma': ['a'], 'nevus': ['b']})   # nothing confused
    save_audit(clean, tmp_path/'clean.json')
    (tmp_path/'not-an-audit.json').write_text('{"a": 1}')
    cases = [([ '--audit', report], 'records no imaging modality: pass --modality'),
             (['--audit', tmp_path/'nope.json', '--modality', 'x'], 'audit report'),
             (['--audit', tmp_path/'not-an-audit.json', '--modality', 'x'], 'not a readable symptom audit'),
             (['--audit', tmp_path/'clean.json', '--modality', 'x'], 'found no two classes confused: pass --pair'),
             (['--audit', report, '--pairs', 0, '--modality', 'x'], '--pairs 0'),
             (['--pair', 'melanoma', 'nevus', '--pairs', 2, '--modality', 'x'], '--pairs counts the pairs'),
             (['--pair', 'melanoma', 'cat', '--modality', 'x'], 'not a pair of two different classes'),
             (['--pair', 'melanoma', 'nevus', '--modality', 'x', '--add', 0], '--add 0'),
             (['--pair', 'melanoma', 'nevus', '--modality', 'x', '--offline', '--no-cache'], 'cannot go with --no-cache'),
             (['--audit', report, '--pair', 'melanoma', 'nevus'], 'not allowed with argument --audit'),
             ([], 'one of the arguments --audit --pair is required')]
    for extra, words in cases:
        assert words in one_line_failure(cli(capsys, *base, *extra)), extra
    assert not out.exists() and server.requests == 0


def test_differential_refusal_by_the_llm_is_one_line(capsys, tmp_path, server):
    server.push('refusal')
    out = tmp_path/'out.json'
    err = one_line_failure(cli(capsys, 'differential', '--symptoms', PLAIN, '--pair', 'melanoma', 'nevus', '--modality',
                               'dermoscopic image', *llm(server, tmp_path), '-o', out))
    assert 'refused to tell "melanoma" and "nevus" apart' in err and not out.exists()


# ---------------------------------------------------------------- the command as it was
def test_the_generator_form_still_works_and_help_names_the_new_commands(capsys, tmp_path, server, monkeypatch):
    out = tmp_path/'gen.json'
    assert cli(capsys, '--classes', *CLASSES, '--modality', 'dermoscopic image', *llm(server, tmp_path), '-o', out)[0] == 0
    assert [len(v) for v in load_symptoms(out, CLASSES).values()] == [4, 4]
    # a class named like a command is still a class: only the first word picks a command
    assert cli(capsys, '--classes', 'audit', 'differential', '--modality', 'photo', *llm(server, tmp_path),
               '-o', tmp_path/'words.json')[0] == 0
    code, text, _ = cli(capsys, '--help')
    assert code == 0 and 'vip_symptoms audit' in text and 'vip_symptoms differential' in text
    for word in ('audit', 'differential'):
        code, text, _ = cli(capsys, word, '--help')
        assert code == 0 and text.startswith(f'usage: vip_symptoms {word}')
    monkeypatch.setattr('sys.argv', ['vip_symptoms', 'audit', '--data', str(tmp_path/'none'), '--symptoms', str(PLAIN)])
    assert 'data folder' in one_line_failure((symptoms_main(), *capsys.readouterr()))   # the console script's way in
