"""CLIP-Adapter, Tip-Adapter and Tip-Adapter-F (vip.adapters) on the tiny random CLIP: the identities that must hold."""
import pytest
import torch
import torch.nn.functional as F

from vip.adapters import (ClassNameAdapter, CLIPAdapter, TipAdapter, TipAdapterF, fit_tip_adapter_f, residual_mlp,
                          search_grid, tip_adapter)
from vip.baselines import zeroshot_classname
from vip.clip import load_clip, TINY
from vip.core import VipError
from vip.train import LoopConfig, load_checkpoint, predict, save_checkpoint, train_method

CLASSES = ['melanoma', 'nevus']


@pytest.fixture(scope='module')
def clip():
    torch.manual_seed(0)                                   # the same random tiny CLIP every run
    return load_clip(TINY, pretrained=None, device='cpu')


@pytest.fixture(scope='module')
def data(clip):
    "Two clusters of features (class 0 and 1): a cache (N=8), a validation split (40) and stand-in image features (6)."
    g = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(2, clip.embed_dim, generator=g), dim=-1)
    def draw(n):
        y = torch.arange(n) % 2
        return F.normalize(centre[y] + 0.15 * torch.randn(n, clip.embed_dim, generator=g), dim=-1), y
    return draw(8), draw(40), draw(6)


def test_classname_adapter_is_zeroshot(clip, data):
    feats = data[2][0]
    zs = zeroshot_classname(clip, CLASSES, 'dermoscopic image', 'ensemble')
    assert torch.equal(ClassNameAdapter(clip, CLASSES, 'dermoscopic image').forward_features(feats), zs.forward_features(feats))


def test_clip_adapter_learns_its_mlp_and_is_zeroshot_at_ratio_zero(clip, data):
    feats = data[2][0]
    m = CLIPAdapter(clip, CLASSES, reduction=4, ratio=0.2, modality='dermoscopic image')
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ['mlp.0.weight', 'mlp.2.weight']
    assert m.mlp[0].weight.shape == (clip.embed_dim // 4, clip.embed_dim)
    zs = zeroshot_classname(clip, CLASSES, 'dermoscopic image', 'ensemble').forward_features(feats)
    assert not torch.allclose(m.forward_features(feats), zs)          # at 0.2 the adapter changes the logits
    m.ratio = 0.0
    assert torch.equal(m.forward_features(feats), zs)
    with pytest.raises(VipError, match='outside'): CLIPAdapter(clip, CLASSES, ratio=-0.1)


def test_tip_adapter_is_zeroshot_at_alpha_zero(clip, data):
    (k, y), _, (feats, _) = data
    m = TipAdapter(clip, CLASSES, k, y, alpha=3.0, beta=5.0, modality='dermoscopic image')
    zs = zeroshot_classname(clip, CLASSES, 'dermoscopic image', 'ensemble').forward_features(feats)
    assert not torch.allclose(m.forward_features(feats), zs)
    m.alpha = 0.0
    assert torch.equal(m.forward_features(feats), zs)
    assert m.prompt_parameters() == []


def test_tip_adapter_formula(clip, data):
    "Logits = s f W^T + alpha (s / 100) exp(-beta (1 - f K^T)) L, computed here by hand."
    (k, y), _, (feats, _) = data
    m = TipAdapter(clip, CLASSES, k, y, alpha=2.0, beta=4.0)
    s = clip.model.logit_scale.exp()
    want = s * feats @ m.text.T + 2.0 * s / 100 * torch.exp(-4.0 * (1 - feats @ k.T)) @ F.one_hot(y, 2).float()
    torch.testing.assert_close(m.forward_features(feats), want, rtol=1e-5, atol=1e-5)


def test_search_picks_the_grids_best_on_validation(clip, data):
    (k, y), (vf, vy), _ = data
    vy = vy.clone(); vy[:9] = 1 - vy[:9]                               # some hard labels: not every pair is perfect
    alphas, betas = search_grid(10, 6), search_grid(12, 7)
    m = tip_adapter(clip, CLASSES, k, y, vf, vy, alphas=alphas, betas=betas)
    def acc(a, b):
        return (TipAdapter(clip, CLASSES, k, y, a, b).forward_features(vf).argmax(1) == vy).float().mean().item()
    grid = [[acc(a, b) for a in alphas] for b in betas]
    best = max(max(r) for r in grid)
    assert acc(m.alpha, m.beta) == best
    assert (m.beta, m.alpha) == next((b, a) for i, b in enumerate(betas) for j, a in enumerate(alphas) if grid[i][j] == best)
    torch.testing.assert_close(m.grid[2], torch.tensor(grid))


def test_tip_adapter_uses_its_cache(clip, data):
    "On clustered features the cache classifies new images well, whatever the random tiny CLIP's class names say."
    (k, y), (vf, vy), _ = data
    zs = (predict(ClassNameAdapter(clip, CLASSES), vf).argmax(1) == vy).float().mean()
    m = tip_adapter(clip, CLASSES, k, y, vf, vy, alphas=search_grid(100, 20))   # a random CLIP's logits need a large alpha
    assert (predict(m, vf).argmax(1) == vy).float().mean() >= max(0.95, zs)


def test_tip_adapter_f_learns_only_the_keys(clip, data):
    (k, y), (vf, vy), _ = data
    m = tip_adapter(clip, CLASSES, k, y, vf, vy, alphas=(1.0,), betas=(5.0,), finetune=True)
    assert isinstance(m, TipAdapterF)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ['keys']
    torch.testing.assert_close(m.keys.detach(), k)
    frozen = [t.detach().clone() for t in [m.values, m.text, *clip.model.parameters()]]
    k0 = m.keys.detach().clone()
    loop = LoopConfig(epochs=1, batch_size=len(k), lr=1.0, warmup_epochs=0)        # one step of vip's SGD loop
    state = train_method(m, (k, y), vf, vy, loop, progress=False)
    assert state['finished'] and len(state['history']) == 1
    assert not torch.equal(m.keys.detach(), k0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, [m.values, m.text, *clip.model.parameters()]))


def test_checkpoints_hold_the_learned_tensors(clip, data, tmp_path):
    (k, y), _, (feats, _) = data
    for make in (lambda: CLIPAdapter(clip, CLASSES), lambda: TipAdapterF(clip, CLASSES, k, y, 1.0, 5.0)):
        a, b = make(), make()
        with torch.no_grad():
            for p in a.prompt_parameters(): p.add_(0.01 * torch.randn_like(p))
        save_checkpoint(tmp_path/'x.safetensors', a, {'epoch': 0})
        load_checkpoint(tmp_path/'x.safetensors', b)
        torch.testing.assert_close(b.forward_features(feats), a.forward_features(feats))
    with pytest.raises(VipError, match='expects other tensors'):
        load_checkpoint(tmp_path/'x.safetensors', TipAdapterF(clip, CLASSES, k[:4], y[:4]))


def test_fit_tip_adapter_f(clip, data):
    (k, y), (vf, vy), _ = data
    m = tip_adapter(clip, CLASSES, k, y, vf, vy, alphas=(5.0, 6.0), betas=(1.0, 5.0), finetune=True)
    before = F.cross_entropy(m.forward_features(k), y).item()
    out = fit_tip_adapter_f(m, k, y, vf, vy, epochs=5, lr=0.01)
    assert out['history'][-1]['loss'] < before
    assert out['best_val'] == max(h['val_accuracy'] for h in out['history'])
    assert (m.alpha, m.beta) in {(a, b) for a in (5.0, 6.0) for b in (1.0, 5.0)}       # searched again on the same grid
    with pytest.raises(VipError, match='finetune=True'): fit_tip_adapter_f(TipAdapter(clip, CLASSES, k, y), k, y, vf, vy)


def test_errors_are_one_line(clip, data):
    (k, y), (vf, vy), _ = data
    cases = [(lambda: TipAdapter(clip, CLASSES, torch.randn(3, clip.embed_dim + 1), torch.tensor([0, 1, 0])), 'cannot make a cache'),
             (lambda: TipAdapter(clip, CLASSES, k, y[:3]), 'one label per image'),
             (lambda: TipAdapter(clip, CLASSES, k, y + 2), 'class indices'),
             (lambda: tip_adapter(clip, CLASSES, k, y, vf, vy, betas=()), 'grid is empty'),
             (lambda: residual_mlp(8, 9), 'does not fit'),
             (lambda: CLIPAdapter(clip, CLASSES).forward_features(torch.randn(2, 5)), 'do not fit this model')]
    for fn, words in cases:
        with pytest.raises(VipError, match=words) as e: fn()
        assert '\n' not in str(e.value)


def test_parameter_counts_on_vit_b16():
    "CLIP-Adapter on D = 512 with reduction 4: two 512 x 128 matrices."
    assert sum(p.numel() for p in residual_mlp(512, 4).parameters()) == 131_072
