#!/usr/bin/env python3
"""Writes the fixtures of teachers read from files and of `milan embed` (tools/FIXTURES.md, "Teacher files and
embeddings").

Run with the pinned reference environment (tools/setup_reference_env.sh, with its extras):

    /work/venv-ref/bin/python tools/make_teacher_fixtures.py [--out DIR]

Output (DIR default Tests/Fixtures):
  teachers/dinov2_timm.safetensors  the tiny DINOv2 of models/dinov2_hf.safetensors under timm /
                                    facebookresearch DINOv2 names, loaded into timm's VisionTransformer (LayerScale,
                                    LN eps 1e-6): its forward_features and class attention equal the Hugging Face
                                    model's (checked) and are stored with the input
  embed/folder/<class>/*.png        four small RGB images of different sizes (seeded noise + shapes, Pillow)
  embed/vit_timm_embed.safetensors  timm forward_features of the tiny ViT of models/vit_timm.safetensors on those
                                    images after torchvision's evaluation transform (Resize(36, bicubic),
                                    CenterCrop(32), ToTensor, Normalize(ImageNet)), in ImageFolder order, and the last
                                    block's class attention (heads averaged, class column dropped)
Deterministic: fixed seeds, float32 on CPU, one thread, canonical safetensors header.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from functools import partial

from reference_compat import skip_torchvision_fakes, write_fixture  # noqa: E402

skip_torchvision_fakes()

import timm  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "Tests", "Fixtures")
BASE_METADATA = {"format": "pt", "generator": "tools/make_teacher_fixtures.py", "torch": torch.__version__,
                 "timm": timm.__version__, "torchvision": torchvision.__version__}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def assert_close(name, a, b, atol):
    d = (a.double() - b.double()).abs().max().item()
    print(f"  {name}: max |diff| {d:.3g}", file=sys.stderr)
    assert d <= atol, (name, d, atol)


def last_block_cls_attention(model, x):
    """Class-token row of the last block's softmax(q k^T / sqrt(dh)), heads averaged, class column dropped."""
    seen = {}
    blk = model.blocks[-1]
    h = blk.norm1.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    with torch.no_grad():
        feats = model.forward_features(x)
    h.remove()
    a = blk.attn
    B, N, C = seen["x"].shape
    qkv = a.qkv(seen["x"]).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    probs = torch.softmax(q @ k.transpose(-2, -1) * a.scale, dim=-1).mean(1)
    return feats, probs[:, 0, 1:].contiguous()


def dinov2_timm(out_dir):
    hf = load_file(os.path.join(FIXTURES, "models", "dinov2_hf.safetensors"))
    cfg = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4, qkv_bias=True,
               init_values=1.0, num_classes=0, global_pool="token", class_token=True,
               norm_layer=partial(nn.LayerNorm, eps=1e-6))
    model = TimmViT(**cfg).eval()
    sd = {"cls_token": hf["embeddings.cls_token"], "pos_embed": hf["embeddings.position_embeddings"],
          "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
          "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    for i in range(2):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            sd[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [hf[p + f"attention.attention.{n}.{kind}"] for n in ("query", "key", "value")])
            sd[f"blocks.{i}.attn.proj.{kind}"] = hf[p + f"attention.output.dense.{kind}"]
            sd[f"blocks.{i}.norm1.{kind}"] = hf[p + f"norm1.{kind}"]
            sd[f"blocks.{i}.norm2.{kind}"] = hf[p + f"norm2.{kind}"]
            sd[f"blocks.{i}.mlp.fc1.{kind}"] = hf[p + f"mlp.fc1.{kind}"]
            sd[f"blocks.{i}.mlp.fc2.{kind}"] = hf[p + f"mlp.fc2.{kind}"]
        sd[f"blocks.{i}.ls1.gamma"] = hf[p + "layer_scale1.lambda1"]
        sd[f"blocks.{i}.ls2.gamma"] = hf[p + "layer_scale2.lambda1"]
    model.load_state_dict(sd, strict=True)
    x = hf["input"]
    feats, attn = last_block_cls_attention(model, x)
    assert_close("timm DINOv2 features vs Hugging Face Dinov2Model", feats, hf["features"], 2e-6)
    assert_close("timm DINOv2 class attention vs Hugging Face", attn, hf["attn_cls"], 1e-6)
    tensors = {**{k: v.contiguous() for k, v in model.state_dict().items()}, "input": x, "features": feats,
               "attn_cls": attn}
    meta = {**BASE_METADATA, "config": json.dumps({"num_heads": 3, "embed_dim": 48, "depth": 2, "patch_size": 8,
                                                   "img_size": 32, "init_values": 1.0, "ln_eps": 1e-6,
                                                   "act": "GELU (erf)"}, sort_keys=True),
            "source": "Tests/Fixtures/models/dinov2_hf.safetensors weights under timm names (q/k/v rows stacked "
                      "into attn.qkv, layer_scale{1,2}.lambda1 -> ls{1,2}.gamma, layernorm -> norm; no mask_token)",
            "outputs": "features = timm forward_features(input) (after the final norm) = the HF last_hidden_state; "
                       "attn_cls = last block class attention, heads averaged, class column dropped"}
    write_fixture(os.path.join(out_dir, "teachers", "dinov2_timm.safetensors"), tensors, meta, (torch.float32,),
                  400_000, None, REPO)


def embed_fixture(out_dir):
    folder = os.path.join(out_dir, "embed", "folder")
    rng = np.random.default_rng(21)
    specs = [("cat", "a.png", (40, 36)), ("cat", "b.png", (36, 44)), ("dog", "c.png", (32, 32)),
             ("dog", "d.png", (50, 40))]
    for cls, name, (w, h) in specs:
        os.makedirs(os.path.join(folder, cls), exist_ok=True)
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr, "RGB")
        d = ImageDraw.Draw(im)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        d.ellipse([x0, y0, x0 + w // 2, y0 + h // 2], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im.save(os.path.join(folder, cls, name), optimize=False)
    ds = torchvision.datasets.ImageFolder(folder)
    tf = T.Compose([T.Resize(int(32 / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                    T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x = torch.stack([tf(ds.loader(p)) for p, _ in ds.samples])
    labels = torch.tensor([y for _, y in ds.samples], dtype=torch.int64)
    vit = load_file(os.path.join(FIXTURES, "models", "vit_timm.safetensors"))
    model = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4, qkv_bias=True,
                    num_classes=5, global_pool="token").eval()
    model.load_state_dict({k[6:]: v for k, v in vit.items() if k.startswith("model.")}, strict=True)
    feats, attn = last_block_cls_attention(model, x)
    files = [os.path.relpath(p, folder) for p, _ in ds.samples]
    tensors = {"input": x, "features": feats, "cls_attention": attn, "labels": labels}
    meta = {**BASE_METADATA, "files": json.dumps(files), "classes": json.dumps(ds.classes),
            "model": "Tests/Fixtures/models/vit_timm.safetensors model.* (timm VisionTransformer img 32, patch 8, "
                     "width 48, depth 2, 3 heads)",
            "transform": "Resize(36, BICUBIC) (shorter side), CenterCrop(32), ToTensor, Normalize(ImageNet)",
            "outputs": "features = forward_features(input) [4, 17, 48] (after the final norm); cls_attention = last "
                       "block class attention [4, 16], heads averaged, class column dropped"}
    write_fixture(os.path.join(out_dir, "embed", "vit_timm_embed.safetensors"), tensors, meta,
                  (torch.float32, torch.int64), 100_000, None, REPO)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=FIXTURES)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(os.path.join(args.out, "teachers"), exist_ok=True)
    dinov2_timm(args.out)
    embed_fixture(args.out)


if __name__ == "__main__":
    main()
