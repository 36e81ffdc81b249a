"""One precision policy: `--precision` reaches every method's text encoding (and the image features), on the CPU too.

CPU autocast supports bf16, so the policy is tested without a GPU: a hook on the text transformer's first linear layer
records the dtype it computes in while each method makes its class features.
"""
import pytest
import torch

import vip.clip
from vip.adapters import tip_adapter
from vip.clip import TINY, encode_images, load_clip
from vip.train import FITTED, METHODS, TrainConfig, build_method, method_options

SYMPTOMS = {'melanoma': ['the spot is dark', 'the spot has jagged edges'], 'nevus': ['the spot is light brown']}
TEXT_METHODS = [m for m in METHODS if m != 'linear_probe']        # the linear probe encodes no text


@pytest.fixture(scope='module')
def clip():
    torch.manual_seed(0)
    return load_clip(TINY, device='cpu')


def text_dtypes(clip, method, precision):
    "The dtypes the text tower computed in while `method` was built and made its logits."
    seen = []
    vip.clip._TEXT_FEATURES.clear()                    # text features computed before would hide the tower's dtype
    layer = clip.model.transformer.resblocks[0].mlp.c_fc
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    feats, labels = torch.nn.functional.normalize(torch.randn(4, clip.embed_dim), dim=-1), torch.tensor([0, 1, 0, 1])
    try:
        if method in FITTED:                           # built from training features, here random ones
            m = tip_adapter(clip, ['melanoma', 'nevus'], feats, labels, feats, labels, precision=precision,
                            finetune=method == 'tip_adapter_f', alphas=(1.0,), betas=(1.0,))
        else: m = build_method(method, clip, ['melanoma', 'nevus'], SYMPTOMS, **method_options(TrainConfig(precision=precision)))
        if getattr(m, 'needs_images', False): logits = m(torch.randn(3, 3, clip.image_size, clip.image_size))
        else: logits = m.forward_features(torch.randn(3, clip.embed_dim))
    finally: hook.remove()
    assert logits.dtype == torch.float32 and logits.shape == (3, 2)      # logits are float32 under every policy
    return set(seen)


@pytest.mark.parametrize('method', TEXT_METHODS)
@pytest.mark.parametrize('precision,dtype', [('bf16', torch.bfloat16), ('fp32', torch.float32), ('auto', torch.float32)])
def test_every_method_encodes_text_under_the_policy(clip, method, precision, dtype):
    assert text_dtypes(clip, method, precision) == {dtype}


def test_a_callers_autocast_does_not_leak_into_fp32(clip):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert text_dtypes(clip, 'vip', 'fp32') == {torch.float32}


@pytest.mark.parametrize('precision,dtype', [('bf16', torch.bfloat16), ('auto', torch.float32)])
def test_image_features_follow_the_policy(clip, precision, dtype):
    seen = []
    hook = clip.model.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    images = torch.randn(2, 3, clip.image_size, clip.image_size)
    try: f, y = encode_images(clip, [(images, torch.tensor([0, 1]))], progress=False, precision=precision)
    finally: hook.remove()
    assert set(seen) == {dtype} and f.dtype == torch.float32 and f.shape == (2, clip.embed_dim)
