"""The package's shape: vip modules import each other only at the top, never in a circle, and never a private name.

Read from the source with `ast`, so the test needs no import of vip and names the file and line of each offence.
"""
import ast
from pathlib import Path

VIP = Path(__file__).resolve().parents[1]/'vip'
MODULES = sorted(p.stem for p in VIP.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def _vip_imports(path: Path):
    "(line, imported vip module, names, whether inside a function) of every import of a vip module in `path`."
    tree = ast.parse(path.read_text(encoding='utf-8'))
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in funcs for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: target = mod.split('.')[0] if mod else None
            elif mod == 'vip' or mod.startswith('vip.'): target = mod.split('.')[1] if '.' in mod else None
            else: continue
            names = [a.name for a in node.names]
            if target is None: yield from ((node.lineno, n, [], id(node) in inner) for n in names if n in MODULES)
            else: yield node.lineno, target, names, id(node) in inner
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('vip.'): yield node.lineno, a.name.split('.')[1], [], id(node) in inner


def _graph():
    return {m: {t for _, t, _, _ in _vip_imports(VIP/f'{m}.py') if t != m} for m in MODULES}


def test_no_vip_import_inside_a_function():
    bad = [f'vip/{m}.py:{line} imports vip.{t}' for m in MODULES for line, t, _, inside in _vip_imports(VIP/f'{m}.py') if inside]
    assert bad == []


def test_no_private_name_crosses_modules():
    bad = [f'vip/{m}.py:{line} takes {n} from vip.{t}' for m in MODULES
           for line, t, names, _ in _vip_imports(VIP/f'{m}.py') for n in names if n.startswith('_') and n != '__version__']
    assert bad == []


def test_no_import_circle():
    graph, state, cycles = _graph(), {}, []
    def visit(m, path):
        state[m] = 'open'
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 'open': cycles.append(' -> '.join(path[path.index(t):] + [t]))
            elif t not in state: visit(t, path + [t])
        state[m] = 'done'
    for m in MODULES:
        if m not in state: visit(m, [m])
    assert cycles == []


def test_the_checks_can_fail(tmp_path):
    "The scanner sees a function-level import and a private name (so the tests above can fail)."
    f = tmp_path/'x.py'
    f.write_text('from .core import VipError\n\ndef g():\n    from .clip import _secret\n')
    got = list(_vip_imports(f))
    assert [(line, t, names, inside) for line, t, names, inside in got] == [(1, 'core', ['VipError'], False),
                                                                            (4, 'clip', ['_secret'], True)]
