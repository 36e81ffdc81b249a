"Stored notebook outputs: no terminal control codes, no paths of the machine that ran them."
import json, re
from pathlib import Path
import pytest

NBS = sorted((Path(__file__).resolve().parents[1]/'nbs').rglob('*.ipynb'))
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
MACHINE = re.compile(r'(?<![\w.])(/work/|/tmp/|/home/|/root/|/Users/|[A-Z]:\\\\Users\\\\)')

def outputs(nb: dict):
    "(cell index, text) of every stored text output of a notebook."
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            t = o.get('text') or o.get('data', {}).get('text/plain') or o.get('traceback') or ''
            yield i, ''.join(t) if isinstance(t, list) else t

def problems(nb: dict) -> list[str]:
    "Where a notebook's stored outputs hold a control code or a machine path, in words."
    out = []
    for i, t in outputs(nb):
        if ANSI.search(t): out.append(f'cell {i}: a terminal control code')
        if m := MACHINE.search(t): out.append(f'cell {i}: a machine path ({m.group(1)}...)')
    return out

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_stored_outputs_are_clean(path):
    assert problems(json.loads(path.read_text(encoding='utf-8'))) == []

def test_the_scan_can_fail():
    nb = {'cells': [{'outputs': [{'text': ['epoch 1 \x1b[32m100%\x1b[0m']}]},
                    {'outputs': [{'data': {'text/plain': "PosixPath('/work/main/runs/x')"}}]}]}
    assert problems(nb) == ['cell 0: a terminal control code', 'cell 1: a machine path (/work/...)']
