"""Faults and bad input at the commands (issue 21): one line and exit 2 (130 for an interrupt), nothing half-made.

Each case runs the real command (in this process, or in a subprocess where a signal must reach it) on a toy set of generated squares (not medical images) and the tiny
random-weight CLIP, so each takes seconds.
"""
import json, os, signal, subprocess, sys, time, warnings
from pathlib import Path

import pytest

from test_train import _args, _toy
from vip.cli import train_main, eval_main

CODE = {'train': 'from vip.cli import train_main as m', 'eval': 'from vip.cli import eval_main as m'}


@pytest.fixture
def run(capsys, monkeypatch):
    "Run a command in this process: (exit status, standard error); faster than a subprocess, the same code path."
    def go(kind, args, cwd):
        monkeypatch.chdir(cwd)
        code = (train_main if kind == 'train' else eval_main)([str(a) for a in args])
        return subprocess.CompletedProcess(args, code, *capsys.readouterr())
    return go


def _one_line(r, prog='vip_train', code=2):
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, err)
    lines = [l for l in err.splitlines() if not l.startswith(('WARNING:root', 'UserWarning', '  warnings.warn'))]
    assert len(lines) == 1 and 'Traceback' not in err and lines[0].startswith(f'{prog}: '), err
    return lines[0]


@pytest.fixture
def toy(tmp_path): return _toy(tmp_path/'toy')


@pytest.mark.parametrize('extra,words', [
    (['--pretrained', '/nope.safetensors'], 'not found'),
    (['--lr', '-1'], 'lr must be above 0'),
    (['--workers', '-1'], 'workers must be 0 or more'),
    (['--shots', '0'], 'shots must be at least 1'),
    (['--val_shots', '0'], 'val_shots must be at least 1'),
])
def test_a_failed_start_leaves_no_run_folder(run, tmp_path, toy, extra, words):
    r = run('train', _args(toy, tmp_path/'runs', 'myrun', *extra), tmp_path)
    assert words in _one_line(r)
    assert not (tmp_path/'runs'/'myrun').exists()
    if extra[0] == '--pretrained':                                   # the same command without the mistake runs
        assert run('train', _args(toy, tmp_path/'runs', 'myrun'), tmp_path).returncode == 0


def test_out_naming_a_file_is_one_line_and_the_file_is_kept(run, tmp_path, toy):
    (tmp_path/'runs.txt').write_text('mine')
    assert 'is a file, not a folder' in _one_line(run('train', _args(toy, tmp_path/'runs.txt', 'r'), tmp_path))
    assert (tmp_path/'runs.txt').read_text() == 'mine'


def test_resume_refuses_options_it_would_ignore(run, tmp_path, toy):
    assert run('train', _args(toy, tmp_path/'runs', 'r', '--stop_after', '1'), tmp_path).returncode == 0
    r = run('train', ['--resume', tmp_path/'runs'/'r', '--epochs', '5'], tmp_path)
    assert '--epochs would be ignored' in _one_line(r)


def test_skip_unreadable_from_the_command_line(run, tmp_path, toy):
    (toy/'train'/'nevus'/'3.png').write_bytes(b'not a png')
    assert run('train', _args(toy, tmp_path/'runs', 'a'), tmp_path).returncode == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        r = run('train', _args(toy, tmp_path/'runs', 'b', '--skip_unreadable', 'true'), tmp_path)
    assert r.returncode == 0, r.stderr
    assert '3.png' in r.stderr + ' '.join(str(w.message) for w in caught)     # the warning names what was left out
    assert json.loads((tmp_path/'runs'/'b'/'config.json').read_text())['skip_unreadable'] is True


def test_vip_eval_checks_images_before_using_them(run, tmp_path, toy):
    assert run('train', _args(toy, tmp_path/'runs', 'r'), tmp_path).returncode == 0
    (toy/'test'/'melanoma'/'2.png').write_bytes(b'\x89PNG broken')       # damaged after training
    line = _one_line(run('eval', [tmp_path/'runs'/'r'], tmp_path), 'vip_eval')
    assert '2.png' in line and '--skip_unreadable' in line
    r = run('eval', [tmp_path/'runs'/'r', '--skip_unreadable', 'true'], tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_damaged_last_checkpoint_says_how_to_go_on(run, tmp_path, toy):
    assert run('train', _args(toy, tmp_path/'runs', 'r', '--stop_after', '1'), tmp_path).returncode == 0
    last = tmp_path/'runs'/'r'/'vip-last.safetensors'
    last.write_bytes(last.read_bytes()[:50])
    line = _one_line(run('train', ['--resume', tmp_path/'runs'/'r', '--quiet'], tmp_path))
    assert 'damaged; delete it, and --resume trains that method again' in line and 'best.safetensors or' not in line


def test_resume_removes_temporary_files_of_killed_writers(run, tmp_path, toy):
    assert run('train', _args(toy, tmp_path/'runs', 'r', '--stop_after', '1'), tmp_path).returncode == 0
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()           # a process id that has ended
    stale = tmp_path/'runs'/'r'/f'.vip-last.safetensors.{dead.pid}.tmp'
    stale.write_bytes(b'half a checkpoint')
    assert run('train', ['--resume', tmp_path/'runs'/'r', '--quiet'], tmp_path).returncode == 0
    assert not stale.exists() and list((tmp_path/'runs'/'r').glob('.*.tmp')) == []


def _hear_ctrl_c():
    "In the child: Ctrl-C as a terminal delivers it, even when these tests run in a background job (which ignores SIGINT)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_signal(tmp_path, toy, sig, wait_for, extra=(), epochs=60):
    "Start a run in its own process group; send `sig` to the group once `wait_for(run_dir)` holds."
    args = _args(toy, tmp_path/'runs', 'r', *extra)
    args[args.index('--epochs') + 1] = str(epochs)
    p = subprocess.Popen([sys.executable, '-c', f'import sys; {CODE["train"]}; sys.exit(m())', *args], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_hear_ctrl_c)
    deadline = time.time() + 120
    while not wait_for(tmp_path/'runs'/'r') and time.time() < deadline and p.poll() is None: time.sleep(0.05)
    os.killpg(p.pid, sig)
    out, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_names_the_run_folder_and_resume_finishes(run, tmp_path, toy, sig):
    code, err = _start_and_signal(tmp_path, toy, sig, lambda d: (d/'vip-last.safetensors').exists())
    folder = tmp_path/'runs'/'r'
    assert code == 130, err
    assert err.strip().splitlines()[-1] == f'vip_train: interrupted; continue with: vip_train --resume {folder}', err
    assert 'Traceback' not in err
    r = run('train', ['--resume', folder, '--quiet'], tmp_path)
    assert r.returncode == 0 and (folder/'metrics.json').exists(), r.stderr


def test_ctrl_c_while_workers_start_is_never_swallowed(tmp_path, toy):
    "Ctrl-C to the whole group (as a terminal sends it) as soon as the run folder exists: workers are starting."
    for attempt in range(2):
        (tmp_path/f'{attempt}').mkdir()
        code, err = _start_and_signal(tmp_path/f'{attempt}', toy, signal.SIGINT, lambda d: d.exists(),
                                      extra=('--workers', '2', '--augment', 'true'), epochs=400)
        assert code == 130, err
        assert 'Traceback' not in err and err.strip().splitlines()[-1].startswith('vip_train: interrupted'), err


def test_every_vip_error_message_is_one_line():
    "Read from the source: no VipError message has a line break in its text (so every error path prints one line)."
    import ast
    bad, count = [], 0
    for path in sorted((Path(__file__).resolve().parents[1]/'vip').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'VipError':
                count += 1
                texts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                if any('\n' in t for t in texts): bad.append(f'{path.name}:{node.lineno}')
    assert count > 100 and bad == []


def test_a_folder_that_cannot_be_made_is_one_line(run, tmp_path, toy):
    (tmp_path/'file.txt').write_text('mine')                 # --out below a file: the OS refuses the folder
    line = _one_line(run('train', _args(toy, tmp_path/'file.txt'/'runs', 'r'), tmp_path))
    assert line.startswith('vip_train: error: cannot use') and (tmp_path/'file.txt').read_text() == 'mine'


def test_a_bug_is_one_line_too_and_masks_keys(tmp_path, toy, monkeypatch, capsys):
    import vip.cli
    def broken(*a, **k): raise RuntimeError('boom with sk-abcdefghijklmnopqrstuvwxyz0123')
    monkeypatch.setattr(vip.cli, 'fit', broken)
    code = train_main([str(a) for a in _args(toy, tmp_path/'runs', 'r')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and 'unexpected RuntimeError' in err and 'please report' in err
    assert 'abcdefghijklmnop' not in err                     # anything like an API key is masked
    monkeypatch.setenv('VIP_DEBUG', '1')
    with pytest.raises(RuntimeError): train_main([str(a) for a in _args(toy, tmp_path/'runs', 'r')])
