"End-to-end training: the bundled main job, resume after an interruption, two processes, and bad input."
import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vip.cli import train_main

REPO = Path(__file__).resolve().parents[1]


def _toy(root: Path, n=6, size=36) -> Path:
    "Two classes of generated squares (dark or light, noisy): a toy set, not medical images."
    rng = np.random.default_rng(0)
    for split in ('train', 'val', 'test'):
        for c, level in (('melanoma', 70), ('nevus', 170)):
            d = root/split/c; d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.clip(level + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)).save(d/f'{i}.png')
    (root/'symptoms.json').write_text(json.dumps({'melanoma': ['the spot is dark', 'jagged edges'],
                                                  'nevus': ['the spot is light brown', 'smooth edges']}))
    return root


def _args(toy: Path, out: Path, name: str, *extra):
    return ['--data', str(toy), '--symptoms', str(toy/'symptoms.json'), '--backbone', 'vip-tiny', '--epochs', '4',
            '--lr', '0.05', '--batch_size', '4', '--augment', 'false', '--workers', '0', '--device', 'cpu',
            '--out', str(out), '--name', name, '--quiet', *extra]


def test_main_job_on_the_bundled_default(tmp_path, capsys):
    assert train_main(['--out', str(tmp_path), '--name', 'default', '--quiet', '--workers', '0']) == 0
    m = json.loads((tmp_path/'default'/'metrics.json').read_text())
    assert m['dataset'] == 'derm-synth' and m['backbone'] == 'pocket' and m['seed'] == 1 and m['shots'] is None
    assert {'vip', 'zeroshot_classname', 'zeroshot_symptoms'} <= set(m['methods'])
    for r in m['methods'].values():
        assert set(r) == {'accuracy', 'macro_f1', 'balanced_accuracy', 'auc'} and all(0 <= v <= 1 for v in r.values())
    for f in ('config.json', 'split.json', 'vip-best.safetensors', 'vip-last.safetensors', 'train.log',
              'training_curve.png', 'confusion.png', 'roc.png', 'symptom_weights.json'):
        assert (tmp_path/'default'/f).is_file(), f
    # prompts only: context (4 x W=96), class queries (2 x D=128), query and key maps (2 x 128 x 128), float32
    assert (tmp_path/'default'/'vip-best.safetensors').stat().st_size < 4 * (4 * 96 + 2 * 128 + 2 * 128 * 128) + 4096
    assert 'zeroshot_symptoms' in capsys.readouterr().out                         # the printed table


def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    toy = _toy(tmp_path/'toy')
    assert train_main(_args(toy, tmp_path/'runs', 'whole')) == 0
    assert train_main(_args(toy, tmp_path/'runs', 'cut', '--stop_after', '2')) == 0
    cut = tmp_path/'runs'/'cut'
    assert not (cut/'metrics.json').exists()
    assert train_main(['--resume', str(cut), '--quiet']) == 0
    whole = tmp_path/'runs'/'whole'
    assert json.loads((cut/'metrics.json').read_text()) == json.loads((whole/'metrics.json').read_text())
    a, b = load_file(str(cut/'vip-best.safetensors')), load_file(str(whole/'vip-best.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(a) == {'prompt.context.ctx', 'prompt.merge.query', 'prompt.merge.w_q.weight', 'prompt.merge.w_k.weight'}


def test_two_processes_end_with_identical_prompts(tmp_path):
    toy = _toy(tmp_path/'toy')
    exe = shutil.which('vip_train')
    if exe is None: pytest.skip('vip_train is not installed (pip install -e .)')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '--no-python', exe,
           *_args(toy, tmp_path/'runs', 'ddp')]
    env = {k: v for k, v in os.environ.items() if k not in ('CUDA_VISIBLE_DEVICES',)} | {'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path/'runs'/'ddp'/'train.log').read_text()
    assert '(2 process(es))' in log and 'prompt weights identical on all 2 processes' in log
    assert json.loads((tmp_path/'runs'/'ddp'/'metrics.json').read_text())['methods']['vip']


def _cli(args, cwd):
    r = subprocess.run([sys.executable, '-c', 'import sys; from vip.cli import train_main; sys.exit(train_main())', *args],
                       capture_output=True, text=True, cwd=cwd, timeout=300)
    return r.returncode, r.stderr.strip()


@pytest.mark.parametrize('case', ['missing folder', 'wrong layout', 'classes differ', 'unknown backbone', 'existing run'])
def test_bad_input_is_one_line_exit_2_and_nothing_is_overwritten(tmp_path, case):
    toy = _toy(tmp_path/'toy')
    runs = tmp_path/'runs'; (runs/'taken').mkdir(parents=True); (runs/'taken'/'metrics.json').write_text('{"mine": 1}')
    args = _args(toy, runs, 'new')
    if case == 'missing folder': args[1] = str(tmp_path/'nowhere')
    if case == 'wrong layout':
        flat = tmp_path/'flat'; (flat/'melanoma').mkdir(parents=True); args[1] = str(flat)
    if case == 'classes differ': (toy/'symptoms.json').write_text(json.dumps({'melanoma': ['dark'], 'naevus': ['light']}))
    if case == 'unknown backbone': args[args.index('vip-tiny')] = 'ViT-B/17'
    if case == 'existing run': args[args.index('new')] = 'taken'
    code, err = _cli(args, tmp_path)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and 'Traceback' not in err and err.startswith('vip_train: error: ')
    expected = {'missing folder': 'not found', 'wrong layout': "no 'train' folder", 'classes differ': 'naevus',
                'unknown backbone': 'unknown backbone', 'existing run': 'already exists'}[case]
    assert expected in err
    assert (runs/'taken'/'metrics.json').read_text() == '{"mine": 1}'
    assert sorted(p.name for p in runs.iterdir()) == ['taken']          # no half-made run folder either
