"Fast CPU tests of the context prompt, the merge prompt and the ViP classifier (the notebooks hold the full story)."
import pytest
import torch
import torch.nn.functional as F

from vip.core import VipError
from vip.clip import load_clip, TINY
from vip.context import ContextPrompt, POSITIONS, describe
from vip.merge import MergePrompt
from vip.model import ViP, PlainViP
from vip.bench import bench_symptoms, time_interleaved, median_ratio

SYMPTOMS = {
    'melanoma': ['a dark spot with uneven, jagged edges', 'several colours mixed in one spot',
                 'a blue-white veil over part of the spot'],
    'nevus': ['a round spot of one even brown colour', 'smooth and regular borders'],
}


@pytest.fixture(scope='module')
def clip():
    return load_clip(TINY, device='cpu')


@pytest.mark.parametrize('position', POSITIONS)
@pytest.mark.parametrize('csc', [False, True])
@pytest.mark.parametrize('pack', [True, False])
def test_vip_matches_plain(clip, position, csc, pack):
    torch.manual_seed(0)
    model = ViP(clip, SYMPTOMS, csc=csc, position=position, pack=pack)
    assert model.context.pack == pack
    plain = PlainViP(model)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 1])
    grads = {}
    for name, impl in (('vip', model), ('plain', plain)):
        model.zero_grad(set_to_none=True)
        logits = impl(images)
        F.cross_entropy(logits, labels).backward()
        grads[name] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    assert (grads['vip'][0] - grads['plain'][0]).abs().max() < 1e-4
    for a, b in zip(grads['vip'][1], grads['plain'][1]):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize('position,text', [('end', 'a photo of a {}.'), ('front', '{} a photo of a.'),
                                           ('middle', 'a photo {} of a.')])
def test_ctx_init_equals_open_clip_text(clip, position, text):
    groups = list(SYMPTOMS.values())
    cop = ContextPrompt(clip, groups, ctx_init='a photo of a', position=position)
    texts = [text.format(s.rstrip('.')) for g in groups for s in g]
    with torch.no_grad():
        ref = clip.model.encode_text(clip.tokenizer(texts))
        assert (cop.symptom_features(clip.model) - ref).abs().max() < 1e-4


def test_only_prompts_learn(clip):
    model = ViP(clip, SYMPTOMS, csc=True)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == \
        ['context.ctx', 'merge.query', 'merge.w_q.weight', 'merge.w_k.weight']
    assert all(p.grad is None and not p.requires_grad for p in clip.model.parameters())
    model.train()
    assert not clip.model.training


def test_prompt_state_dict(clip):
    torch.manual_seed(1)
    a, b = ViP(clip, SYMPTOMS), ViP(clip, SYMPTOMS)
    sd = a.prompt_state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        'context.ctx': (4, 32), 'merge.query': (2, 48), 'merge.w_q.weight': (48, 48), 'merge.w_k.weight': (48, 48)}
    b.load_prompt_state_dict(sd)
    x = torch.randn(2, 48)
    assert torch.allclose(a.forward_features(x), b.forward_features(x), atol=1e-6)
    with pytest.raises(VipError, match='wrong shapes'):
        ViP(clip, SYMPTOMS, csc=True).load_prompt_state_dict(sd)
    with pytest.raises(VipError, match='missing'):
        b.load_prompt_state_dict({'context.ctx': sd['context.ctx']})


def test_classes_and_weights(clip):
    model = ViP(clip, SYMPTOMS, classes=['nevus', 'melanoma'])
    assert model.classes == ['nevus', 'melanoma']
    w = model.symptom_weights()
    assert list(w) == ['nevus', 'melanoma'] and [s for s, _ in w['melanoma']] == SYMPTOMS['melanoma']
    assert abs(sum(x for _, x in w['nevus']) - 1) < 1e-5
    with pytest.raises(VipError, match='do not match'):
        ViP(clip, SYMPTOMS, classes=['nevus', 'naevus'])
    with pytest.raises(VipError, match='do not fit this model'):
        model.forward_features(torch.randn(2, clip.text_width))    # W, not D


def test_merge_masks_padding():
    mep = MergePrompt([1, 3], 8)
    merged, a = mep(torch.randn(4, 8))
    assert merged.shape == (2, 8) and a[0].tolist()[1:] == [0.0, 0.0] and abs(a[0, 0].item() - 1) < 1e-6


def test_describe_and_errors(clip):
    cop = ContextPrompt(clip, [['smooth borders'], ['a dark spot']], position='front')
    assert describe(cop, 0).splitlines()[-1].split() == ['S', 's', 's', 'C', 'C', 'C', 'C', '.', 'E']
    with pytest.raises(VipError, match='too long'):
        ContextPrompt(clip, [['dark ' * 80], ['pale']])
    with pytest.raises(VipError, match='unknown context position'):
        ContextPrompt(clip, [['dark'], ['pale']], position='start')


def test_bench_helpers():
    assert sum(len(v) for v in bench_symptoms(10, 8).values()) == 80
    t = time_interleaved({'a': lambda: None, 'b': lambda: None}, reps=2)
    assert {k: len(v) for k, v in t.items()} == {'a': 2, 'b': 2}
    assert median_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 2.0]) == 3.0
