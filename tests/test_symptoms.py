"""Tests of the visual symptom generator (vip.symptoms) against a real HTTP server on 127.0.0.1.

Every LLM scenario goes through the real `openai` client to `FakeLLMServer`, and ends in a valid symptom file or a
one-line error with nothing partial on disk. No test needs a network.
"""
import json, os, re, subprocess, sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from vip.core import VipError
from vip.clip import TINY, encode_texts, load_clip
from vip.symptoms import check_symptoms, count_tokens, load_symptoms, read_symptom_file, save_symptoms
from vip.llm import LLMClient, parse_symptoms
from vip.llm_server import FakeLLMServer
from vip.generate import Candidate, differential_round, generate_symptoms, parse_differences, refine_symptoms
from vip.cli import symptoms_main as main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent/'shared'/'reference'   # the paper's files: read for tests only, never copied
SAMPLES = ROOT/'data_samples'
CLASSES = ['melanoma', 'nevus']


@pytest.fixture
def server():
    with FakeLLMServer(hang_s=2.0) as s: yield s


def cli(capsys, *argv):
    "Run `vip_symptoms` in-process: (exit code, stdout, stderr)."
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def args(server, tmp_path, out='sym.json', *extra, timeout=2, retries=2):
    base = ['--classes', *CLASSES, '--modality', 'dermoscopic image', '--model', 'fake-llm',
            '--cache', tmp_path/'cache', '--clip', 'none', '--timeout', timeout, '--retries', retries,
            '-o', tmp_path/out]
    if server is not None: base += ['--base-url', server.base_url]
    return base + list(extra)


def assert_valid(path, n=4):
    "A valid symptom file: vip's format, n symptoms per class, in class order, that loads back."
    symptoms = load_symptoms(path, classes=CLASSES)
    assert list(symptoms) == CLASSES and all(len(v) == n for v in symptoms.values())
    _, meta = read_symptom_file(path)
    assert meta['format'] == 'vip-symptoms' and meta['classes'] == CLASSES and meta['n'] == n
    return symptoms


def assert_nothing_partial(tmp_path, out='sym.json'):
    "No output file and no temporary file anywhere under tmp_path."
    assert not (tmp_path/out).exists()
    leftovers = [p for p in tmp_path.rglob('*') if p.name.endswith('.tmp') or (p.is_file() and p.name.startswith('.'))]
    assert leftovers == []


def cached_entries(tmp_path): return sorted((tmp_path/'cache').rglob('*.json')) if (tmp_path/'cache').exists() else []


def one_line_error(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('vip_symptoms: error:'), err
    assert 'Traceback' not in err
    for w in words: assert w in err, (w, err)


# ---------------------------------------------------------------- answer shapes
@pytest.mark.parametrize('behaviour,template', [('bullets', 'qa'), ('numbered', 'qa'), ('json', 'visual'),
                                                ('prose', 'visual'), ('bullets', 'looks-like')])
def test_answer_shapes_give_a_valid_file(server, tmp_path, capsys, behaviour, template):
    server.default = behaviour
    code, out, err = cli(capsys, *args(server, tmp_path, 'sym.json', '--template', template))
    assert code == 0, err
    symptoms = assert_valid(tmp_path/'sym.json')
    texts = [t for v in symptoms.values() for t in v]
    assert not any(re.search(r'sure|doctor|here are|fever|patient', t, re.I) for t in texts)  # prose and non-visual gone
    assert read_symptom_file(tmp_path/'sym.json')[1]['generate']['template']['name'] == template
    assert server.requests == (18 if template == 'looks-like' else 2)


def test_json_mode_falls_back_when_unsupported(tmp_path, capsys):
    with FakeLLMServer(json_mode=False) as srv:
        code, _, err = cli(capsys, *args(srv, tmp_path))
        assert code == 0, err
        assert_valid(tmp_path/'sym.json')
        assert srv.requests == 3  # one 400 for response_format, then two plain requests
        assert 'response_format' in srv.bodies[0] and all('response_format' not in b for b in srv.bodies[1:])


# ---------------------------------------------------------------- failures that end in a clear error
def test_empty_answer_is_a_clear_error_and_not_cached(server, tmp_path, capsys):
    server.default = 'empty'
    code, _, err = cli(capsys, *args(server, tmp_path))
    assert code == 2
    one_line_error(err, 'empty answer', '"melanoma"')
    assert_nothing_partial(tmp_path)
    assert cached_entries(tmp_path) == []


def test_refusal_is_a_clear_error_and_not_cached(server, tmp_path, capsys):
    server.push('json', 'refusal')  # the first class is answered, the second refused
    code, _, err = cli(capsys, *args(server, tmp_path))
    assert code == 2
    one_line_error(err, 'refused to describe "nevus"', '--template')
    assert_nothing_partial(tmp_path)
    assert len(cached_entries(tmp_path)) == 1  # the good answer is kept for the next run; the refusal is not


@pytest.mark.parametrize('status', ['429', '500'])
def test_error_then_success_is_retried(server, tmp_path, capsys, status):
    server.push(status)
    code, _, err = cli(capsys, *args(server, tmp_path))
    assert code == 0, err
    assert_valid(tmp_path/'sym.json')
    assert server.requests == 3  # 2 classes, one retried


@pytest.mark.parametrize('status,words', [('429', ['429', 'rate limit']), ('500', ['answered 500'])])
def test_persistent_error_is_a_clear_error(server, tmp_path, capsys, status, words):
    server.default = status
    code, _, err = cli(capsys, *args(server, tmp_path, retries=1))
    assert code == 2
    one_line_error(err, *words, '2 tries')
    assert server.requests == 2
    assert_nothing_partial(tmp_path)


def test_hang_past_the_timeout_is_a_clear_error(server, tmp_path, capsys):
    server.default = 'hang'
    code, _, err = cli(capsys, *args(server, tmp_path, timeout=1, retries=0))
    assert code == 2 and server.requests == 1    # gave up on the one hanging request (no wall-clock bound: load varies)
    one_line_error(err, 'did not answer within 1 s', '--timeout')
    assert_nothing_partial(tmp_path)


def test_hang_then_success_is_retried(server, tmp_path, capsys):
    server.push('hang')
    code, _, err = cli(capsys, *args(server, tmp_path, timeout=1, retries=1))
    assert code == 0, err
    assert_valid(tmp_path/'sym.json')
    assert server.requests == 3


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    with FakeLLMServer() as srv: url = srv.base_url  # a port that was just freed
    code, _, err = cli(capsys, *args(None, tmp_path, 'sym.json', '--base-url', url, timeout=1, retries=0))
    assert code == 2
    one_line_error(err, 'cannot reach the LLM server')
    assert_nothing_partial(tmp_path)


def test_missing_key_is_a_clear_error(tmp_path, capsys):
    code, _, err = cli(capsys, *args(None, tmp_path))
    assert code == 2
    one_line_error(err, 'OPENAI_API_KEY is not set')


def test_subprocess_prints_no_traceback(server, tmp_path):
    server.default = 'empty'
    argv = [str(a) for a in args(server, tmp_path)]
    r = subprocess.run([sys.executable, '-c', 'import sys; from vip.cli import symptoms_main as main; sys.exit(main())', *argv],
                       capture_output=True, text=True, timeout=120, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert r.returncode == 2
    one_line_error(r.stderr, 'empty answer')
    assert_nothing_partial(tmp_path)


# ---------------------------------------------------------------- cache and reproducibility
def test_rerun_with_cache_makes_zero_requests_and_the_same_file(server, tmp_path, capsys):
    extra = ['--clip', TINY]  # with refining by CLIP (random weights, seeded)
    assert cli(capsys, *args(server, tmp_path, 'a.json', *extra))[0] == 0
    first = server.requests
    code, out, err = cli(capsys, *args(server, tmp_path, 'b.json', *extra))
    assert code == 0, err
    assert server.requests == first == 2 and '(0 requests, 2 answers from the cache)' in out
    assert (tmp_path/'a.json').read_bytes() == (tmp_path/'b.json').read_bytes()
    assert read_symptom_file(tmp_path/'a.json')[1]['refine']['clip'] == 'vip-tiny (random weights)'
    server.stop()  # offline: no server at all, the same bytes again
    code, out, err = cli(capsys, *args(None, tmp_path, 'c.json', *extra, '--offline'))
    assert code == 0, err
    assert (tmp_path/'a.json').read_bytes() == (tmp_path/'c.json').read_bytes()


def test_offline_cache_miss_is_a_clear_error(tmp_path, capsys):
    code, _, err = cli(capsys, *args(None, tmp_path, 'sym.json', '--offline'))
    assert code == 2
    one_line_error(err, 'no cached answer', 'offline')
    assert_nothing_partial(tmp_path)


def _fixed_clock(day):
    "A clock for LLMClient(now=...) that always reads noon UTC of `day`."
    return lambda: datetime.fromisoformat(f'{day}T12:00:00+00:00')


def _without_date(meta): return {k: v for k, v in meta.items() if k != 'date'}


def test_shipped_cache_replays_offline_like_a_live_run(server):
    "A replay of the shipped answers equals a live run on another day in all but `date`, which says when each was received."
    shipped_days = {json.loads(p.read_text())['response']['date'] for p in (SAMPLES/'llm_cache').rglob('*.json')}
    replay = LLMClient('fake-llm', cache_dir=SAMPLES/'llm_cache', offline=True, now=_fixed_clock('2040-02-29'))
    live = LLMClient('fake-llm', base_url=server.base_url, now=_fixed_clock('2031-07-09'))
    for classes, modality in ((['normal lung', 'pneumonia'], 'chest X-ray'), (CLASSES, 'dermoscopic image')):
        (s_replay, m_replay), (s_live, m_live) = (generate_symptoms(classes, modality, client=c) for c in (replay, live))
        assert s_replay == s_live and _without_date(m_replay) == _without_date(m_live)
        assert m_replay['date'] == max(shipped_days)      # when the shipped answers were received, not today
        assert m_live['date'] == '2031-07-09'             # the live answers arrived on the live run's day
    assert (replay.requests, replay.cache_hits, live.requests) == (0, 4, 4)


def test_date_is_the_day_the_answers_were_received(server, tmp_path):
    "A file made live on one day and replayed from its cache on a later day is the same file, date included."
    def make(out, **kw):
        s, m = generate_symptoms(CLASSES, 'dermoscopic image', client=LLMClient('fake-llm', cache_dir=tmp_path/'cache', **kw))
        save_symptoms(tmp_path/out, s, m)
        return m
    first = make('first.json', base_url=server.base_url, now=_fixed_clock('2026-01-05'))
    later = make('later.json', offline=True, now=_fixed_clock('2029-12-31'))
    assert first['date'] == later['date'] == '2026-01-05'
    assert (tmp_path/'first.json').read_bytes() == (tmp_path/'later.json').read_bytes()
    assert {json.loads(p.read_text())['response']['date'] for p in cached_entries(tmp_path)} == {'2026-01-05'}
    days = iter(['2026-03-01', '2026-03-02'])               # answers received on two days: the file names the newer
    clock = lambda: datetime.fromisoformat(f'{next(days)}T23:59:59+00:00')
    m = generate_symptoms(CLASSES, 'dermoscopic image', client=LLMClient('fake-llm', base_url=server.base_url, now=clock))[1]
    assert m['date'] == '2026-03-02'


def test_api_key_is_never_written(server, tmp_path, capsys, monkeypatch):
    key = 'sk-test-' + 'k3y' * 12
    monkeypatch.setenv('OPENAI_API_KEY', key)
    assert cli(capsys, *args(server, tmp_path))[0] == 0
    for p in tmp_path.rglob('*'):
        if p.is_file(): assert key not in p.read_text() and 'k3yk3y' not in p.read_text()
    assert key not in json.dumps(server.bodies)


def test_openai_base_url_from_the_environment(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('OPENAI_BASE_URL', server.base_url)
    assert cli(capsys, *args(None, tmp_path))[0] == 0
    assert server.requests == 2


# ---------------------------------------------------------------- command line
def test_existing_output_is_never_overwritten(server, tmp_path, capsys):
    (tmp_path/'sym.json').write_text('keep me')
    code, _, err = cli(capsys, *args(server, tmp_path))
    assert code == 2 and server.requests == 0  # refused before asking anything
    one_line_error(err, 'already exists', '--force')
    assert (tmp_path/'sym.json').read_text() == 'keep me'
    assert cli(capsys, *args(server, tmp_path, 'sym.json', '--force'))[0] == 0
    assert_valid(tmp_path/'sym.json')


@pytest.mark.parametrize('layout', ['splits', 'flat'])
def test_classes_from_a_dataset_folder(server, tmp_path, capsys, layout):
    for split in (['train', 'val', 'test'] if layout == 'splits' else ['']):
        for c in CLASSES: (tmp_path/'data'/split/c).mkdir(parents=True); (tmp_path/'data'/split/c/'x.jpg').touch()
    argv = args(server, tmp_path)
    argv[argv.index('--classes'):argv.index('--classes') + 3] = ['--data', tmp_path/'data']
    assert cli(capsys, *argv)[0] == 0
    assert_valid(tmp_path/'sym.json')


def test_dataset_folder_errors(tmp_path, capsys):
    for split, classes in (('train', CLASSES), ('val', ['melanoma'])):
        for c in classes: (tmp_path/'data'/split/c).mkdir(parents=True)
    base = ['--modality', 'x', '-o', tmp_path/'sym.json', '--clip', 'none']
    code, _, err = cli(capsys, '--data', tmp_path/'data', *base)
    assert code == 2; one_line_error(err, 'val/ split')
    code, _, err = cli(capsys, '--data', tmp_path/'nope', *base)
    assert code == 2; one_line_error(err, 'not found')
    code, _, err = cli(capsys, '--classes', 'a', '--data', tmp_path/'data', *base)
    assert code == 2; one_line_error(err, 'not allowed with')


def test_no_refine_keeps_the_first_n(server, tmp_path, capsys):
    assert cli(capsys, *args(server, tmp_path, 'sym.json', '--no-refine', '-n', '3'))[0] == 0
    symptoms = assert_valid(tmp_path/'sym.json', n=3)
    assert symptoms['melanoma'] == parse_symptoms(json.dumps({'symptoms': server.answers['melanoma']}))[:3]
    assert read_symptom_file(tmp_path/'sym.json')[1]['refine'] is None


def test_too_few_usable_symptoms(server, tmp_path, capsys):
    code, _, err = cli(capsys, *args(server, tmp_path, 'sym.json', '-n', '7'))
    assert code == 2
    one_line_error(err, 'usable symptoms of "melanoma"', '--candidates')
    assert_nothing_partial(tmp_path)


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize('text', [
    '- Dark spot\n- Blue patch',
    '* Dark spot\n* Blue patch',
    '• Dark spot\n• Blue patch',
    '1. Dark spot\n2. Blue patch',
    '1) **Dark spot.**\n2) "Blue patch"',
    '{"symptoms": ["Dark spot", "Blue patch"]}',
    '```json\n["Dark spot", "Blue patch"]\n```',
    'Here you go: {"melanoma": [{"text": "Dark spot"}, {"text": "Blue patch"}]} Hope it helps.',
    'Sure! These are what you may see:\n\n- Dark spot\n- Blue patch\n\nSee a doctor.',
    'Dark spot. Blue patch.',
])
def test_parse_symptoms(text):
    assert parse_symptoms(text) == ['Dark spot', 'Blue patch']


@pytest.mark.parametrize('text', ['', '   ', None, "I'm sorry, but I can't help with that.", 'As an AI, I cannot.'])
def test_parse_nothing(text):
    assert parse_symptoms(text) == []


# ---------------------------------------------------------------- symptom files
def test_load_both_formats_in_class_order(tmp_path):
    ours = {'nevus': ['Round spot', {'text': 'Net of brown lines', 'original': 'Pigment network'}], 'melanoma': ['Ragged border']}
    save_symptoms(tmp_path/'ours.json', ours, {'model': 'x'})
    (tmp_path/'plain.json').write_text(json.dumps({'nevus': ['Round spot', 'Net of brown lines'], 'melanoma': ['Ragged border']}))
    for f in ('ours.json', 'plain.json'):
        s = load_symptoms(tmp_path/f, classes=CLASSES)
        assert list(s) == CLASSES and s['nevus'] == ['Round spot', 'Net of brown lines']
    assert read_symptom_file(tmp_path/'ours.json')[0]['nevus'][1] == {'text': 'Net of brown lines', 'original': 'Pigment network'}
    assert read_symptom_file(tmp_path/'plain.json')[1] == {}


@pytest.mark.parametrize('content,words', [
    ('{"a": []}', 'has no symptoms'),
    ('{"a": ["x", "X."]}', 'repeats the symptom'),
    ('{"a": ["x", 3]}', 'not a string'),
    ('{"a": ["  "]}', 'is empty'),
    ('{"a": [{"text": "x", "note": "y"}]}', 'use a string or'),
    ('{}', 'holds no classes'),
    ('["x"]', 'not an object'),
    ('{"a": ["x"],', 'not valid JSON'),
    ('{"meta": {}, "symptoms": {"a": ["x"]}, "extra": 1}', 'exactly an object "meta"'),
    ('{"meta": {"format_version": 99}, "symptoms": {"a": ["x"]}}', 'upgrade vip'),
    ('{"a": ["' + 'word ' * 72 + '"]}', 'shorten it'),
])
def test_invalid_files_give_one_line_errors(tmp_path, content, words):
    (tmp_path/'s.json').write_text(content)
    with pytest.raises(VipError, match=re.escape(words)) as e: load_symptoms(tmp_path/'s.json')
    assert '\n' not in str(e.value)


def test_symptom_file_with_a_byte_order_mark_is_read(tmp_path):
    "Windows Notepad saves UTF-8 with a byte-order mark; it is still UTF-8 JSON."
    (tmp_path/'s.json').write_text(json.dumps({'melanoma': ['Ragged border'], 'nevus': ['Round spot']}), encoding='utf-8-sig')
    assert (tmp_path/'s.json').read_bytes()[:3] == b'\xef\xbb\xbf'
    assert load_symptoms(tmp_path/'s.json', classes=CLASSES) == {'melanoma': ['Ragged border'], 'nevus': ['Round spot']}


@pytest.mark.parametrize('content,words', [
    ('{"nevus": "Round spot"}', 'not a list: write them as a list of sentences'),
    ('{"nevus": {"text": "Round spot"}}', 'are an object, not a list'),
    ('{"nevus": null}', 'are null, not a list'),
])
def test_symptoms_that_are_not_a_list_say_so(tmp_path, content, words):
    (tmp_path/'s.json').write_text(content)
    with pytest.raises(VipError, match=re.escape(words)) as e: load_symptoms(tmp_path/'s.json')
    assert 'has no symptoms' not in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('content,words', [
    ('{"a": ["x", 3]}', 'is the number 3, not a string'),
    ('{"a": ["x", ["y"]]}', 'is a list, not a string'),
    ('{"a": ["x", true]}', 'is true, not a string'),
    ('3', 'holds the number 3, not an object'),
])
def test_wrong_types_are_named_in_plain_words(tmp_path, content, words):
    (tmp_path/'s.json').write_text(content)
    with pytest.raises(VipError, match=re.escape(words)) as e: load_symptoms(tmp_path/'s.json')
    assert not re.search(r'\ba (int|bool|float|NoneType)\b', str(e.value))


def test_token_limit_counts_the_context(tmp_path):
    text = ' '.join(['patch'] * 66)  # 66 + '.' = 67 tokens; + SOS/EOS = 69
    assert count_tokens(text + '.') == 67
    check_symptoms({'a': [text]}, n_ctx=8)
    with pytest.raises(VipError, match='only 66 fit beside 9 context tokens'): check_symptoms({'a': [text]}, n_ctx=9)


def test_class_mismatch_and_missing_file(tmp_path):
    save_symptoms(tmp_path/'s.json', {'melanoma': ['x'], 'nevi': ['y']})
    with pytest.raises(VipError, match='missing from the symptom file'): load_symptoms(tmp_path/'s.json', classes=CLASSES)
    with pytest.raises(VipError, match='not found'): load_symptoms(tmp_path/'nope.json')


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path):
    save_symptoms(tmp_path/'s.json', {'a': ['x']})
    before = (tmp_path/'s.json').read_bytes()
    with pytest.raises(VipError, match='already exists'): save_symptoms(tmp_path/'s.json', {'a': ['y']})
    with pytest.raises(VipError, match='has no symptoms'): save_symptoms(tmp_path/'s.json', {'a': []}, overwrite=True)
    with pytest.raises(VipError, match='credential'): save_symptoms(tmp_path/'t.json', {'a': ['x']}, {'api_key': 'x'})
    assert (tmp_path/'s.json').read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['s.json']
    save_symptoms(tmp_path/'s.json', {'a': ['y']}, overwrite=True)
    assert load_symptoms(tmp_path/'s.json') == {'a': ['y']}


def test_shipped_symptom_sets():
    for task, classes in (('pneumonia', ['normal lung', 'pneumonia']), ('derm7pt', CLASSES)):
        s = load_symptoms(SAMPLES/'symptoms'/f'{task}.json', classes=classes)
        assert [len(v) for v in s.values()] == [4, 4]
        assert read_symptom_file(SAMPLES/'symptoms'/f'{task}.json')[1]['generate'] is None


@pytest.mark.skipif(not REFERENCE.is_dir(), reason='the paper\'s reference files (../shared/reference) are absent')
def test_reference_files_load_and_are_not_copied():
    for task in ('pneumonia', 'derm7pt'):
        split = json.loads((REFERENCE/f'split_{task}.json').read_text())
        classes = sorted({row[2] for row in split['train']}, key=lambda c: min(r[1] for r in split['train'] if r[2] == c))
        paper = load_symptoms(REFERENCE/f'symptoms_{task}.json', classes=classes, n_ctx=16)
        assert list(paper) == classes and all(len(v) == 4 for v in paper.values())
        ours = load_symptoms(SAMPLES/'symptoms'/f'{task}.json', classes=classes)
        norm = lambda t: re.sub(r'[^a-z ]', '', t.lower()).strip()
        assert not {norm(t) for v in paper.values() for t in v} & {norm(t) for v in ours.values() for t in v}
        # the paper's set can be refined without an LLM (generation switched off)
        refined, meta = generate_symptoms(classes, 'x', given=paper)
        assert meta['generate'] is None and [len(v) for v in refined.values()] == [4, 4]


# ---------------------------------------------------------------- refining with CLIP
def test_clip_near_duplicates_are_merged():
    torch.manual_seed(0)
    clip = load_clip(TINY, device='cpu')
    texts = ['Dark spot', 'Blue patch', 'Ragged border', 'Many colours', 'Black dots']
    emb = encode_texts(clip, [f'{t}.' for t in texts])
    sim = (emb @ emb.T).fill_diagonal_(-2)
    i, j = divmod(int(sim.argmax()), len(texts))
    cands = {'melanoma': [Candidate(t, order=k) for k, t in enumerate(texts)],
             'nevus': [Candidate(t, order=k) for k, t in enumerate(['Round spot', 'Even brown'])]}
    out = refine_symptoms(cands, n=2, clip=clip, threshold=float(sim.max()) - 1e-4)
    dropped = [x for x in out['melanoma'] if x.dropped and x.dropped.startswith('close to')]
    assert [x.text for x in dropped] == [texts[max(i, j)]]
    kept_first = [x for x in out['melanoma'] if x.text == texts[min(i, j)]][0]
    assert kept_first.votes == 2
    assert sum(x.dropped is None for x in out['melanoma']) == 2
    with pytest.raises(VipError, match='only 1 usable'): refine_symptoms(cands, n=2, clip=clip, threshold=-1.0)


# ---------------------------------------------------------------- differential questions about confused pairs
PAIR = [('melanoma', 'nevus')]


def derm_synth():
    "The hand-written plain-word symptom file of the synthetic derm-synth set: (entries, meta)."
    return read_symptom_file(SAMPLES/'symptoms'/'derm-synth.json')


def ask_pair(server, tmp_path, entries=None, meta=None, **kw):
    entries, meta0 = derm_synth() if entries is None else (entries, meta)
    client = LLMClient('fake-llm', base_url=server.base_url, cache_dir=tmp_path/'cache', timeout=2, max_retries=0)
    return (*differential_round(entries, meta0, PAIR, client, modality='dermoscopic image', **kw), client)


def dropped(meta, start):
    return [d for d in meta['differential'][-1]['dropped'] if d['reason'].startswith(start)]


def test_differential_round_adds_screened_answers_and_records_the_round(server, tmp_path):
    entries, _ = derm_synth()
    symptoms, meta, client = ask_pair(server, tmp_path, source='audit')
    assert {c: symptoms[c][:4] for c in symptoms} == entries            # what the file had stays, first
    assert [len(v) for v in symptoms.values()] == [6, 6]
    bank = FakeLLMServer().pair_answers[frozenset(CLASSES)]
    assert symptoms['melanoma'][4:] == bank['melanoma'][:2]             # no CLIP: the first usable answers win
    rnd = meta['differential'][0]
    assert (rnd['round'], rnd['pairs'], rnd['source'], rnd['model'], rnd['answers']) == (1, [list(CLASSES)], 'audit', 'fake-llm', 1)
    assert rnd['template']['name'] == 'differential' and meta['date'] == rnd['date']
    assert {d['text'] for d in dropped(meta, 'not visible')} == {'The spot has grown over the past months',
                                                                'The patient has had it since childhood'}
    veil = [d for d in rnd['dropped'] if 'veil' in d['text'] or 'blue-white' in d['text']]
    assert veil[0]['text'] == 'A hazy blue-white patch over part of the spot'   # screened like a candidate: jargon rewritten
    save_symptoms(tmp_path/'plus.json', symptoms, meta)
    assert [len(v) for v in load_symptoms(tmp_path/'plus.json', CLASSES).values()] == [6, 6]
    # a rerun from the cache asks nothing and writes the same file
    again, meta2, client2 = ask_pair(server, tmp_path, source='audit')
    assert client2.requests == 0 and client2.cache_hits == 1
    save_symptoms(tmp_path/'plus2.json', again, meta2)
    assert (tmp_path/'plus.json').read_bytes() == (tmp_path/'plus2.json').read_bytes()
    # a second round is appended to the record
    third, meta3, _ = ask_pair(server, tmp_path, entries=symptoms, meta=meta, k=3)
    assert [r['round'] for r in meta3['differential']] == [1, 2]
    assert [len(v) for v in third.values()] == [8, 7]        # the bank has one usable nevus answer left
    assert len(dropped(meta3, 'repeats')) == 4              # the first round's additions are in the file now


def test_differential_answer_repeating_a_symptom_is_not_added_twice(server, tmp_path):
    server.push('echo')
    symptoms, meta, _ = ask_pair(server, tmp_path)
    repeats = dropped(meta, 'repeats')
    assert [d['text'] for d in repeats] == ['The spot is lopsided, not the same on both sides', 'The spot is symmetric and round']
    assert 'already in the file' in repeats[0]['reason']
    texts = check_symptoms(symptoms)                     # would raise on a symptom twice in a class
    assert sum(t.casefold() == 'the spot is lopsided, not the same on both sides' for t in texts['melanoma']) == 1
    assert [len(v) for v in texts.values()] == [6, 6]


def test_differential_answer_filed_under_another_class_is_rejected(server, tmp_path):
    server.push('wrong-class')
    symptoms, meta, _ = ask_pair(server, tmp_path)
    wrong = [d for d in meta['differential'][0]['dropped'] if d['class'] == 'dysplastic nevus']
    assert len(wrong) == 4 and 'neither "melanoma" nor "nevus"' in wrong[0]['reason']
    assert len(symptoms['nevus']) == 4 and len(symptoms['melanoma']) == 6   # nothing guessed into "nevus"


def test_differential_answer_is_assigned_by_the_class_it_names(tmp_path):
    bank = {frozenset(CLASSES): {'NEVUS': ['A single even colour'], 'The Melanoma.': ['Black dots near the edge']}}
    with FakeLLMServer(pair_answers=bank) as srv:
        symptoms, meta, _ = ask_pair(srv, tmp_path)
    assert symptoms['nevus'][-1] == 'A single even colour' and symptoms['melanoma'][-1] == 'Black dots near the edge'
    assert meta['differential'][0]['dropped'] == []


def test_differential_refusal_is_one_line_and_not_cached(server, tmp_path):
    server.push('refusal')
    with pytest.raises(VipError, match='refused to tell "melanoma" and "nevus" apart') as e: ask_pair(server, tmp_path)
    assert '\n' not in str(e.value) and cached_entries(tmp_path) == []
    _, meta, client = ask_pair(server, tmp_path)           # asked again, and answered
    assert client.requests == 1 and len(meta['differential'][0]['added']['nevus']) == 2


def test_differential_without_json_mode_reads_headings(tmp_path):
    with FakeLLMServer(json_mode=False) as srv:
        symptoms, _, _ = ask_pair(srv, tmp_path)
        assert 'response_format' not in srv.bodies[-1]
    assert [len(v) for v in symptoms.values()] == [6, 6]
    assert parse_differences('melanoma:\n- Dark dots\n\n**Nevus**:\n1. One colour') == {'melanoma': ['Dark dots'], 'Nevus': ['One colour']}


@pytest.mark.parametrize('pairs, words', [([('melanoma', 'cat')], 'not a pair of two different classes'),
                                          ([('nevus', 'nevus')], 'not a pair of two different classes'),
                                          ([], 'no confused pairs')])
def test_differential_bad_pairs_are_clear_errors(server, tmp_path, pairs, words):
    entries, meta = derm_synth()
    client = LLMClient('fake-llm', base_url=server.base_url)
    with pytest.raises(VipError, match=words): differential_round(entries, meta, pairs, client, 'dermoscopic image')
    with pytest.raises(VipError, match='modality is unknown'): differential_round(entries, meta, PAIR, client)
    assert server.requests == 0
