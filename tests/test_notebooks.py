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

# "Run all" must be safe: long cells sit behind one switch that is off, key/GPU cells check before they run.
GUARDS = {'slow': ('RUN_LONG',), 'gpu': ('RUN_LONG', 'cuda.is_available()'), 'llm': ('RUN_LONG', 'OPENAI_API_KEY')}
SWITCH = re.compile(r'^RUN_LONG\s*=\s*False\b', re.M)

def code_cells(nb: dict):
    "(index, source) of every code cell."
    return [(i, ''.join(c['source'])) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']

def unguarded(nb: dict) -> list[str]:
    "Flagged cells that would run (and fail or take long) under Run all, in words."
    cells, out = code_cells(nb), []
    if any(re.search(r'^#\|\s*slow', s, re.M) for _, s in cells) and not any(SWITCH.search(s) for _, s in cells):
        out.append('no `RUN_LONG = False` switch')
    for i, s in cells:
        for flag, words in GUARDS.items():
            if re.search(rf'^#\|\s*{flag}\b', s, re.M) and not any(w in s for w in words):
                out.append(f'cell {i}: flagged {flag} but not behind {" or ".join(words)}')
    return out

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_run_all_is_safe(path):
    assert unguarded(json.loads(path.read_text(encoding='utf-8'))) == []

# Every figure a notebook cell draws is checked for overlapping or clipped labels in that cell or the next.
DRAWS = re.compile(r'plt\.subplots\(|plt\.figure\(|(?<![\w.])(plot_\w+|show_samples)\(')

def unchecked_figures(nb: dict) -> list[str]:
    "Cells that draw a figure with no `figure_problems` (or `save_figure`) check in the same or the next code cell."
    cells = code_cells(nb)
    return [f'cell {i}' for k, (i, s) in enumerate(cells)
            if not s.lstrip().startswith(('#| export', '#| exporti')) and DRAWS.search(re.sub(r'def \w+\(', '', s))
            and not re.search(r'figure_problems|save_figure', s + (cells[k + 1][1] if k + 1 < len(cells) else ''))]

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_figures_are_checked(path):
    assert unchecked_figures(json.loads(path.read_text(encoding='utf-8'))) == []

def test_the_notebook_rules_can_fail():
    nb = {'cells': [{'cell_type': 'code', 'source': ['#| slow\n', 'train()']},
                    {'cell_type': 'code', 'source': ['#| llm\n', 'ask()']},
                    {'cell_type': 'code', 'source': ['fig, ax = plt.subplots()']}]}
    assert unguarded(nb) == ['no `RUN_LONG = False` switch', 'cell 0: flagged slow but not behind RUN_LONG',
                             'cell 1: flagged llm but not behind RUN_LONG or OPENAI_API_KEY']
    assert unchecked_figures(nb) == ['cell 2']

def test_readme_states_the_measured_main_job_time():
    "The README's time of the main job is the one 09a_run measured and stored."
    root = NBS[0].parents[1] if NBS[0].parent.name == 'tutorials' else NBS[0].parent
    run = json.loads((root/'results'/'default_run.json').read_text())
    readme = (root.parent/'README.md').read_text(encoding='utf-8')
    assert f"took {run['seconds']:.0f} s on one thread" in readme
    assert f"{run['seconds_split']['encode']:.0f} s encoding the images, {run['seconds_split']['train']:.0f} s training" in readme
