"""VPT and MaPLe (issue 18): prompts inside the image tower, checked against zero-shot CLIP, CoOp and each other."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

from vip.baselines import CoOp, zeroshot_classname
from vip.clip import TINY, Clip, load_clip
from vip.core import VipError
from vip.visual_prompts import MaPLe, VPT, encode_prompted_image, max_prompt_depth

CLASSES = ['melanoma', 'nevus']


@pytest.fixture(scope='module')
def clip(): return load_clip(TINY, pretrained=None, device='cpu')


@pytest.fixture(scope='module')
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=g)


def _zeroshot_logits(clip, images):
    zs = zeroshot_classname(clip, CLASSES, 'dermoscopic image', 'ensemble')
    with torch.no_grad(): return zs.forward_features(F.normalize(clip.model.encode_image(images), dim=-1))


@pytest.mark.parametrize('deep', [False, True])
def test_vpt_without_tokens_is_zero_shot_clip_and_with_tokens_is_not(clip, images, deep):
    ref = _zeroshot_logits(clip, images)
    with torch.no_grad():
        assert torch.allclose(VPT(clip, CLASSES, 0, deep, 'dermoscopic image')(images), ref, atol=1e-5)
        assert (VPT(clip, CLASSES, 4, deep, 'dermoscopic image')(images) - ref).abs().max() > 1e-3


def test_deep_vpt_learns_layers_times_tokens_times_width(clip):
    layers, width = len(clip.model.visual.transformer.resblocks), clip.model.visual.conv1.out_channels
    assert [(n, p.numel()) for n, p in VPT(clip, CLASSES, 4, deep=True).named_parameters()] == [('prompts', layers * 4 * width)]
    assert [(n, p.numel()) for n, p in VPT(clip, CLASSES, 4).named_parameters()] == [('prompts', 4 * width)]


def test_prompts_after_the_class_token_equal_prompts_appended_by_hooks_on_open_clip(clip, images):
    v = clip.model.visual
    p = [0.02 * torch.randn(3, v.conv1.out_channels) for _ in range(len(v.transformer.resblocks))]
    hooks = [v.ln_pre.register_forward_pre_hook(lambda m, a: (torch.cat([a[0], p[0].expand(len(a[0]), -1, -1)], 1),))]
    hooks += [v.transformer.resblocks[i].register_forward_pre_hook(
        lambda m, a, i=i: (torch.cat([a[0][:, :-3], p[i].expand(len(a[0]), -1, -1)], 1),)) for i in range(1, len(p))]
    try:
        with torch.no_grad(): plain = v(images)
    finally:
        for h in hooks: h.remove()
    with torch.no_grad(): assert torch.allclose(encode_prompted_image(v, images, p), plain, atol=1e-5)


def test_maple_learns_exactly_its_prompts_and_couplings_and_only_they_get_gradients(clip, images):
    m = MaPLe(clip, CLASSES, depth=2)
    W, Wv = clip.text_width, clip.model.visual.conv1.out_channels
    assert [(n, p.numel()) for n, p in m.named_parameters() if p.requires_grad] == [
        ('text_prompts', 2 * W), ('context.ctx', 2 * W), ('couplings.0.weight', Wv * W), ('couplings.0.bias', Wv),
        ('couplings.1.weight', Wv * W), ('couplings.1.bias', Wv)]
    F.cross_entropy(m(images), torch.tensor([0, 1, 0])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.prompt_parameters())
    assert [n for n, p in clip.model.named_parameters() if p.grad is not None or p.requires_grad] == []


def test_maple_at_depth_one_is_coop_in_text_and_shallow_vpt_in_the_image(clip, images):
    m = MaPLe(clip, CLASSES, n_ctx=2, depth=1, ctx_init='a photo')
    vpt = VPT(clip, CLASSES, 2)
    with torch.no_grad():
        assert torch.allclose(m.class_features(), CoOp(clip, CLASSES, ctx_init='a photo').class_features(), atol=1e-5)
        vpt.prompts.copy_(m.vision_prompts()[0][None])
        assert torch.allclose(m.encode_image(images), vpt.encode_image(images), atol=1e-5)


def test_maple_keeps_the_words_after_its_context_as_text(clip):
    assert MaPLe(clip, CLASSES, depth=1).context.prompts == ['of a melanoma.', 'of a nevus.']


@pytest.mark.parametrize('make', [lambda c: VPT(c, CLASSES, 4), lambda c: VPT(c, CLASSES, 4, deep=True),
                                  lambda c: MaPLe(c, CLASSES, depth=2)])
def test_one_sgd_step_changes_the_prompts_and_nothing_of_clip(clip, images, make):
    m = make(clip)
    frozen = {k: v.clone() for k, v in clip.model.state_dict().items()}
    before = m.prompt_state_dict()
    opt = torch.optim.SGD(m.prompt_parameters(), lr=0.1)
    F.cross_entropy(m(images), torch.tensor([0, 1, 0])).backward()
    opt.step()
    after = m.prompt_state_dict()
    assert all((after[k] - before[k]).abs().max() > 0 for k in before)
    assert all(torch.equal(v, frozen[k]) for k, v in clip.model.state_dict().items())


def test_errors_say_what_to_do(clip):
    rn = Clip(open_clip.create_model('RN50', pretrained=None), None, None, clip.tokenizer, 'RN50', None)
    with pytest.raises(VipError, match='needs a ViT image tower'): VPT(rn, CLASSES)
    with pytest.raises(VipError, match='MaPLe needs a ViT image tower'): MaPLe(rn, CLASSES)
    assert max_prompt_depth(clip) == 2
    with pytest.raises(VipError, match='pass depth from 1 to 2'): MaPLe(clip, CLASSES, depth=9)
    with pytest.raises(VipError, match='cannot be cached'): VPT(clip, CLASSES).forward_features(torch.randn(2, clip.embed_dim))
    with pytest.raises(VipError, match='never make exactly n_ctx=5'): MaPLe(clip, CLASSES, n_ctx=5, depth=1)
    assert VPT.needs_images and MaPLe.needs_images
