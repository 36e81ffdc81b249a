"""Hugging Face text towers (BiomedCLIP's kind): exactness, a training step, model folders, one-line errors.

Everything runs offline on `vip-tiny-bert` (a two-layer BERT built from a BertConfig, a local WordPiece vocabulary,
open_clip's own HFTextEncoder, random weights)."""
import json, math, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

pytest.importorskip('transformers')
from transformers import BertConfig
from open_clip.hf_model import HFTextEncoder

from vip.core import VipError
from vip.clip import (TINY_BERT, TINY_CONFIG, HUB_NAMES, BIOMEDCLIP, load_clip, save_clip, hf_text_parts,
                      write_tiny_bert, encode_texts, resolve_backbone, TINY_BERT_TEXT)
from vip.context import ContextPrompt, POSITIONS, special_ids, symptom_prompt
from vip.model import ViP
from vip.baselines import CoOp, CoCoOp, zeroshot_classname, zeroshot_symptoms
from vip.cli import train_main

SYMPTOMS = {'melanoma': ['a dark spot with uneven, jagged edges', 'several colours mixed in one spot',
                         'a blue-white veil over part of the spot'],
            'nevus': ['a round spot of one even brown colour', 'smooth and regular borders.']}


@pytest.fixture(scope='module')
def bert():
    torch.manual_seed(0)
    return load_clip(TINY_BERT, device='cpu')


def _swap_tower(clip, pooler_type: str, proj_type: str):
    "The same CLIP with another HFTextEncoder on a BertConfig (random weights): other poolers and projections."
    old = hf_text_parts(clip.model)
    cfg = BertConfig(vocab_size=old.token_embedding.weight.shape[0], **TINY_BERT_TEXT)
    torch.manual_seed(3)
    clip.model.text = HFTextEncoder('unused', output_dim=clip.embed_dim, config=cfg, pooler_type=pooler_type,
                                    proj_type=proj_type).eval().requires_grad_(False)
    return clip


def _plain_logits(model: ViP, feats: torch.Tensor) -> torch.Tensor:
    "ViP's logits the plain way: per class, per prompt, each prompt alone in its sequence; the merge by hand."
    clip, cop, mep = model.clip, model.context, model.merge
    t = hf_text_parts(clip.model)
    _, period, sep = special_ids(clip.tokenizer)
    M, merged = cop.n_ctx, []
    for c, name in enumerate(model.classes):
        ctx = cop.ctx[c] if cop.csc else cop.ctx                                   # (M, W)
        T = []
        for s in model.symptoms[name]:
            ids = clip.tokenizer([symptom_prompt(s)])[0]
            e = int((ids == sep).nonzero()[0])
            emb = t.token_embedding(ids[:e + 1])                                   # [CLS] tokens . [SEP]
            n = e - 1 - int(ids[e - 1] == period)
            cls, body, rest = emb[:1], emb[1:1 + n], emb[1 + n:]
            parts = {'end': [cls, ctx, body, rest], 'front': [cls, body, ctx, rest],
                     'middle': [cls, ctx[:M // 2], body, ctx[M // 2:], rest]}[cop.position]
            x = torch.cat(parts)[None]
            ones = torch.ones(x.shape[:2], dtype=torch.long)
            T.append(t.proj(t.pooler(t.transformer(inputs_embeds=x, attention_mask=ones), ones))[0])
        T = torch.stack(T)                                                         # (S_c, D)
        q = mep.query[c] @ mep.w_q.weight.T
        a = torch.softmax((T @ mep.w_k.weight.T) @ q / math.sqrt(T.shape[1]), dim=0)
        merged.append(mep.query[c] + a @ T)
    cf = F.normalize(torch.stack(merged), dim=-1)
    return model.logit_scale * F.normalize(feats, dim=-1) @ cf.T


CASES = {'cls_last_hidden_state_pooler/mlp': [(p, c) for p in POSITIONS for c in (False, True)],   # BiomedCLIP's
         'mean_pooler/linear': [('end', False), ('middle', True)], 'cls_pooler/mlp': [('front', True)]}


@pytest.mark.parametrize('tower', list(CASES))
def test_batched_equals_the_plain_loop_logits_and_gradients(tower):
    torch.manual_seed(0)
    clip = load_clip(TINY_BERT, device='cpu')
    if tower != 'cls_last_hidden_state_pooler/mlp': clip = _swap_tower(clip, *tower.split('/'))
    feats = torch.randn(6, clip.embed_dim)
    worst = 0.
    for position, csc in CASES[tower]:
        if True:
            torch.manual_seed(1)
            model = ViP(clip, SYMPTOMS, position=position, csc=csc)
            assert not model.context.pack                     # packing is for causal towers only
            with torch.no_grad(): model.merge.query.normal_()  # queries away from zero: the merge matters
            ours = model.forward_features(feats)
            ours.square().sum().backward()
            g_ours = [p.grad.clone() for p in model.prompt_parameters()]
            model.zero_grad()
            ref = _plain_logits(model, feats)
            ref.square().sum().backward()
            g_ref = [p.grad for p in model.prompt_parameters()]
            d_logits = (ours - ref).abs().max().item()
            d_grads = max((a - b).abs().max().item() for a, b in zip(g_ours, g_ref))
            worst = max(worst, d_logits, d_grads)
            assert d_logits < 1e-5 and d_grads < 1e-5, (position, csc, d_logits, d_grads)
    print(f'{tower}: largest difference (logits and gradients) {worst:.1e}')


def test_context_from_words_equals_the_words_through_open_clips_encoder(bert):
    texts = [f'a photo of a {symptom_prompt(s)}' for g in SYMPTOMS.values() for s in g]
    cop = ContextPrompt(bert, list(SYMPTOMS.values()), ctx_init='a photo of a')
    with torch.no_grad():
        torch.testing.assert_close(cop.symptom_features(bert.model), bert.model.encode_text(bert.tokenizer(texts)),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize('method', ['vip', 'coop', 'cocoop'])
def test_a_training_step_changes_the_prompts(bert, method):
    torch.manual_seed(0)
    classes = list(SYMPTOMS)
    model = {'vip': lambda: ViP(bert, SYMPTOMS), 'coop': lambda: CoOp(bert, classes),
             'cocoop': lambda: CoCoOp(bert, classes, chunk=2)}[method]()
    params = model.prompt_parameters()
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.5)
    feats, labels = torch.randn(4, bert.embed_dim), torch.tensor([0, 1, 0, 1])
    loss = F.cross_entropy(model.forward_features(feats), labels)
    loss.backward()
    opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    assert not any(p.requires_grad for p in bert.model.parameters())


def test_zero_shot_by_names_and_by_symptoms(bert):
    feats = torch.randn(3, bert.embed_dim)
    zs = zeroshot_classname(bert, list(SYMPTOMS), 'dermoscopic image')
    assert zs.forward_features(feats).shape == (3, 2)
    zsym = zeroshot_symptoms(bert, SYMPTOMS)
    by_hand = [(F.normalize(feats, dim=-1) @ encode_texts(bert, g).T).mean(-1) for g in SYMPTOMS.values()]  # (B,) each
    torch.testing.assert_close(zsym.forward_features(feats), zsym.logit_scale * torch.stack(by_hand, -1), atol=1e-5, rtol=0)


def _hand_made_folder(folder: Path, with_weights: bool = True) -> Path:
    "A model folder written by hand: open_clip config naming a hub text tower, its config.json, vocabulary, weights."
    write_tiny_bert(folder)                                     # config.json, vocab.txt, tokenizer files
    text_cfg = dict(hf_model_name='some-org/not-on-this-machine', hf_tokenizer_name='some-org/not-on-this-machine',
                    hf_proj_type='mlp', hf_pooler_type='cls_last_hidden_state_pooler', context_length=128)
    (folder/'open_clip_config.json').write_text(json.dumps(
        {'model_cfg': dict(embed_dim=48, vision_cfg=TINY_CONFIG['vision_cfg'], text_cfg=text_cfg),
         'preprocess_cfg': {'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25]}}))
    if with_weights:
        torch.manual_seed(5)
        sd = load_clip(TINY_BERT, pretrained=None, device='cpu').model.state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder/'open_clip_model.safetensors'))
    return folder


def test_a_hand_made_folder_loads_by_path_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    folder = _hand_made_folder(tmp_path/'biomed-like')
    clip = load_clip(str(folder), device='cpu')
    assert clip.name == f'local-dir:{folder}' and clip.pretrained == str(folder/'open_clip_model.safetensors')
    assert (clip.text_tower, clip.text_width, clip.embed_dim, clip.context_length) == ('bidirectional', 32, 48, 128)
    ref = load_clip(TINY_BERT, pretrained=str(folder/'open_clip_model.safetensors'), device='cpu')
    ids = clip.tokenizer(['a dark spot.'])
    with torch.no_grad(): torch.testing.assert_close(clip.model.encode_text(ids), ref.model.encode_text(ids))
    assert tuple(clip.eval_transform.transforms[-1].mean) == (0.5, 0.5, 0.5)


def test_save_clip_round_trip(bert, tmp_path):
    folder = save_clip(bert, tmp_path/'saved')
    again = load_clip(f'local-dir:{folder}', device='cpu')
    ids = bert.tokenizer(['smooth and regular borders.'])
    with torch.no_grad(): torch.testing.assert_close(again.model.encode_text(ids), bert.model.encode_text(ids))
    assert again.tokenizer(['a dark spot.']).tolist() == bert.tokenizer(['a dark spot.']).tolist()


def _toy_data(root: Path, n: int = 2) -> Path:
    "A tiny class-folder dataset: n images per class and split, and a symptom file."
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val', 'test'):
        for c, level in (('melanoma', 70), ('nevus', 170)):
            (root/split/c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root/split/c/f'{i}.png')
    (root/'symptoms.json').write_text(json.dumps({'melanoma': ['the spot is dark', 'jagged edges'],
                                                  'nevus': ['the spot is light brown', 'smooth edges']}))
    return root


def test_vip_train_takes_a_folder_as_backbone(bert, tmp_path, capsys):
    folder, toy = save_clip(bert, tmp_path/'model'), _toy_data(tmp_path/'toy')
    code = train_main(['--backbone', str(folder), '--data', str(toy), '--symptoms', str(toy/'symptoms.json'),
                       '--epochs', '1', '--batch_size', '4', '--augment', 'false', '--out', str(tmp_path/'runs'),
                       '--name', 'r', '--quiet', '--workers', '0', '--device', 'cpu', '--feature_cache', 'none',
                       '--method', 'vip,coop,cocoop'])
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path/'runs'/'r'/'metrics.json').read_text())
    assert m['backbone'] == str(folder) and {'vip', 'coop', 'cocoop'} <= set(m['methods'])


def _one_line_exit_2(argv, capsys) -> str:
    code = train_main(argv + ['--epochs', '1', '--quiet', '--workers', '0', '--feature_cache', 'none'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith('vip_train: error: '), err
    return err


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(VipError, match='not found'): load_clip(f'local-dir:{tmp_path}/nowhere')
    with pytest.raises(VipError, match='unknown backbone'): load_clip(str(tmp_path/'nowhere'))
    err = _one_line_exit_2(['--backbone', str(tmp_path/'nowhere'), '--out', str(tmp_path/'runs')], capsys)
    assert 'no folder' in err and not (tmp_path/'runs').exists()


def test_a_folder_without_weights_is_one_line(tmp_path, capsys):
    folder = _hand_made_folder(tmp_path/'m', with_weights=False)
    with pytest.raises(VipError, match='no weights in model folder'): load_clip(str(folder))
    err = _one_line_exit_2(['--backbone', str(folder), '--out', str(tmp_path/'runs')], capsys)
    assert 'open_clip_model.safetensors' in err and '--pretrained none' in err
    assert load_clip(str(folder), pretrained=None, device='cpu').text_tower == 'bidirectional'   # a dry run


def test_a_folder_without_tokenizer_or_text_config_says_which_file(tmp_path):
    folder = _hand_made_folder(tmp_path/'m')
    (folder/'config.json').unlink()
    with pytest.raises(VipError, match='lacks config.json of its text tower'): load_clip(str(folder))
    folder = _hand_made_folder(tmp_path/'n')
    for f in ('tokenizer.json', 'vocab.txt'): (folder/f).unlink(missing_ok=True)
    with pytest.raises(VipError, match='no tokenizer files'): load_clip(str(folder))
    (folder/'open_clip_config.json').unlink()
    with pytest.raises(VipError, match='no open_clip_config.json'): load_clip(str(folder))


def test_missing_transformers_is_one_line(tmp_path, monkeypatch, capsys):
    folder = _hand_made_folder(tmp_path/'m')
    monkeypatch.setitem(sys.modules, 'transformers', None)         # as if it were not installed
    for backbone in (TINY_BERT, BIOMEDCLIP, str(folder)):
        with pytest.raises(VipError, match=r'pip install "vip\[hf\]"'): resolve_backbone(backbone, 'default')
    err = _one_line_exit_2(['--backbone', TINY_BERT, '--out', str(tmp_path/'runs')], capsys)
    assert 'pip install "vip[hf]"' in err


def test_biomedclip_names_resolve_without_a_download():
    assert resolve_backbone(BIOMEDCLIP, 'default') == (HUB_NAMES[BIOMEDCLIP], HUB_NAMES[BIOMEDCLIP])
    assert resolve_backbone(HUB_NAMES[BIOMEDCLIP], None) == (HUB_NAMES[BIOMEDCLIP], None)
    with pytest.raises(VipError, match='does not go with'): resolve_backbone(BIOMEDCLIP, 'openai')
