"Every exercise: its unanswered stub fails its check, its solution (tutorials/solutions.ipynb) passes the same check."
import json, os, re
from pathlib import Path
import pytest
from vip import exercises as ex

NBS = Path(__file__).resolve().parents[1]/'nbs'
SOLUTIONS = NBS/'tutorials'/'solutions.ipynb'
MARK = re.compile(r'^# Exercise (\S+) \((your answer|check|solution)\)\s*$')
EXEMPT = {'index.ipynb': 'the README: nothing to practise yet'}

def marked_cells(path: Path):
    "(exercise id, kind, source) of every code cell of `path` whose first line marks an exercise cell."
    for c in json.loads(path.read_text(encoding='utf-8'))['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code' and (m := MARK.match(src.split('\n', 1)[0])): yield m[1], m[2], src

def learner_exercises() -> dict:
    "id -> {'nb': path, 'your answer': source, 'check': source} over all notebooks but the solutions."
    out = {}
    for p in sorted(NBS.rglob('*.ipynb')):
        if p == SOLUTIONS or '.ipynb_checkpoints' in p.parts: continue
        for i, kind, src in marked_cells(p):
            e = out.setdefault(i, {'nb': p})
            assert e['nb'] == p, f'exercise {i} appears in {e["nb"].name} and {p.name}'
            assert kind != 'solution', f'{p.name}: a solution cell for {i} outside the solutions notebook'
            assert kind not in e, f'{p.name}: two "{kind}" cells for exercise {i}'
            assert kind == 'your answer' or 'your answer' in e, f'{p.name}: the check of {i} comes before its answer cell'
            e[kind] = src
    return out

LEARNER = learner_exercises()
SOLVED = {}
for i, kind, src in marked_cells(SOLUTIONS) if SOLUTIONS.exists() else []: SOLVED.setdefault(i, {})[kind] = src

def test_every_exercise_has_both_cells():
    assert [i for i, e in LEARNER.items() if set(e) != {'nb', 'your answer', 'check'}] == []

def test_numbered_notebooks_have_two_exercises():
    counts = {p.name: 0 for p in NBS.glob('*.ipynb') if p.name not in EXEMPT}
    for e in LEARNER.values():
        if e['nb'].parent == NBS: counts[e['nb'].name] += 1
    assert {n: c for n, c in counts.items() if c < 2} == {}

def test_solutions_cover_every_exercise_with_the_same_check():
    assert sorted(SOLVED) == sorted(LEARNER)
    assert [i for i in LEARNER if SOLVED[i].get('check') != LEARNER[i]['check']] == []

def run(sources: list[str], folder: Path) -> list:
    "Execute `sources` in one fresh namespace from `folder`; the verdicts the check cells recorded."
    start, cwd = len(ex.history), os.getcwd()
    ex.strict(False); os.chdir(folder)
    try:
        ns = {'__name__': '__main__'}
        for s in sources: exec(compile(s, '<exercise>', 'exec'), ns)
    finally: os.chdir(cwd)
    return ex.history[start:]

@pytest.mark.parametrize('name', sorted(LEARNER))
def test_unanswered_stub_fails(name):
    e = LEARNER[name]
    assert run([e['your answer'], e['check']], e['nb'].parent) == [(name, False)]

@pytest.mark.parametrize('name', sorted(LEARNER))
def test_solution_passes(name):
    e = LEARNER[name]
    assert run([SOLVED[name]['solution'], e['check']], e['nb'].parent) == [(name, True)]
