#!/usr/bin/env python3
"""Writes the golden kernel fixtures described in tools/FIXTURES.md.

Run with the pinned reference environment (tools/setup_reference_env.sh):

    /work/venv-ref/bin/python tools/make_fixtures.py [--out DIR]

Output: Tests/Fixtures/kernels/NAME.safetensors (relative to the repository root). Deterministic: every
file has its own torch.Generator seeded with 0, all math is float32 on CPU, and re-running gives identical bytes.
Every gradient is d/d(input) of L = sum(y * gy) for the stored upstream gradient gy (for the scalar losses:
the gradient of the loss itself).
"""
import argparse
import json
import math
import os

import torch

from reference_compat import write_fixture
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "Fixtures", "kernels")
METADATA = {"format": "pt", "generator": "tools/make_fixtures.py", "torch": torch.__version__}


def gen():
    return torch.Generator().manual_seed(0)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def grads(y, gy, inputs):
    """Gradients of sum(y * gy) with respect to inputs."""
    return torch.autograd.grad(y, inputs, grad_outputs=gy)


def matmul():
    g = gen()
    x, w, b = randn(g, 7, 13), randn(g, 11, 13), randn(g, 11)
    gy = randn(g, 7, 11)
    xl, wl, bl = leaf(x), leaf(w), leaf(b)
    y = xl @ wl.t() + bl
    dx, dw, db = grads(y, gy, (xl, wl, bl))
    a, bm = randn(g, 3, 5, 6), randn(g, 3, 6, 4)
    gc = randn(g, 3, 5, 4)
    al, bml = leaf(a), leaf(bm)
    c = al @ bml
    da, dbm = grads(c, gc, (al, bml))
    return dict(x=x, w=w, b=b, y=y, gy=gy, dx=dx, dw=dw, db=db,
                a=a, bm=bm, c=c, gc=gc, da=da, dbm=dbm)


def activations():
    g = gen()
    x = 3 * randn(g, 4, 37)
    gy = randn(g, 4, 37)
    out = dict(x=x, gy=gy)
    fns = {
        "gelu": lambda t: F.gelu(t),
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
    }
    for name, fn in fns.items():
        xl = leaf(x)
        y = fn(xl)
        (dx,) = grads(y, gy, (xl,))
        out[name + "_y"], out[name + "_dx"] = y, dx
    return out


def layernorm():
    g = gen()
    x = 2 * randn(g, 6, 40) + 0.5
    w = 1 + 0.5 * randn(g, 40)
    b = 0.5 * randn(g, 40)
    gy = randn(g, 6, 40)
    xl, wl, bl = leaf(x), leaf(w), leaf(b)
    y = F.layer_norm(xl, (40,), wl, bl, eps=1e-6)
    dx, dw, db = grads(y, gy, (xl, wl, bl))
    y_eps5 = F.layer_norm(x, (40,), w, b, eps=1e-5)
    return dict(x=x, w=w, b=b, y=y, gy=gy, dx=dx, dw=dw, db=db, y_eps5=y_eps5)


def softmax():
    g = gen()
    x = 4 * randn(g, 5, 3, 17)
    gy = randn(g, 5, 3, 17)
    out = dict(x=x, gy=gy)
    for name, fn in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
        xl = leaf(x)
        y = fn(xl, dim=-1)
        (dx,) = grads(y, gy, (xl,))
        out[name + "_y"], out[name + "_dx"] = y, dx
    return out


H, DH = 3, 8


def _attention(q, k, v):
    """Token-major [B, L, H*Dh] in and out; explicit math per head. Returns (o, probs [B,H,Lq,Lk])."""
    B, Lq, _ = q.shape
    Lk = k.shape[1]
    qh = q.view(B, Lq, H, DH).transpose(1, 2)  # [B,H,Lq,Dh]
    kh = k.view(B, Lk, H, DH).transpose(1, 2)
    vh = v.view(B, Lk, H, DH).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(DH)
    probs = torch.softmax(scores, dim=-1)
    oh = probs @ vh  # [B,H,Lq,Dh]
    o = oh.transpose(1, 2).reshape(B, Lq, H * DH)
    return o, probs


def attention():
    g = gen()
    W = H * DH
    q, k, v = randn(g, 2, 5, W), randn(g, 2, 7, W), randn(g, 2, 7, W)
    go = randn(g, 2, 5, W)
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    o, probs = _attention(ql, kl, vl)
    dq, dk, dv = grads(o, go, (ql, kl, vl))
    # cross-check against PyTorch's fused kernel
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(
            q.view(2, 5, H, DH).transpose(1, 2), k.view(2, 7, H, DH).transpose(1, 2),
            v.view(2, 7, H, DH).transpose(1, 2)).transpose(1, 2).reshape(2, 5, W)
    assert torch.allclose(ref, o, atol=1e-5), (ref - o).abs().max()
    out = dict(q=q, k=k, v=v, o=o, go=go, dq=dq, dk=dk, dv=dv, probs_mean=probs.mean(1))

    q2, k2, v2 = randn(g, 2, 6, W), randn(g, 2, 6, W), randn(g, 2, 6, W)
    go2 = randn(g, 2, 6, W)
    ql, kl, vl = leaf(q2), leaf(k2), leaf(v2)
    o2, _ = _attention(ql, kl, vl)
    dq2, dk2, dv2 = grads(o2, go2, (ql, kl, vl))
    out.update(q2=q2, k2=k2, v2=v2, o2=o2, go2=go2, dq2=dq2, dk2=dk2, dv2=dv2)
    return out


def gather():
    g = gen()
    x = randn(g, 2, 6, 4)
    ids = torch.randint(0, 6, (2, 3), generator=g, dtype=torch.int64)
    ids[1, 2] = ids[1, 0]  # guarantee a repeated index so dx exercises the scatter-add accumulation
    gy = randn(g, 2, 3, 4)
    xl = leaf(x)
    y = torch.gather(xl, 1, ids.unsqueeze(-1).expand(-1, -1, 4))
    (dx,) = grads(y, gy, (xl,))
    return dict(x=x, ids=ids, y=y, gy=gy, dx=dx)


def patch_embed():
    g = gen()
    img, w, b = randn(g, 2, 3, 8, 12), randn(g, 5, 3, 4, 4), randn(g, 5)
    gy = randn(g, 2, 6, 5)
    il, wl, bl = leaf(img), leaf(w), leaf(b)
    y = F.conv2d(il, wl, bl, stride=4).flatten(2).transpose(1, 2)
    dimg, dw, db = grads(y, gy, (il, wl, bl))
    return dict(img=img, w=w, b=b, y=y, gy=gy, dimg=dimg, dw=dw, db=db)


def losses():
    g = gen()
    logits = 2 * randn(g, 6, 10)
    target = torch.softmax(randn(g, 6, 10), dim=-1)
    ll = leaf(logits)
    ce = (-(target * F.log_softmax(ll, dim=-1)).sum(-1)).mean()
    (ce_dlogits,) = torch.autograd.grad(ce, ll)

    labels = torch.randint(0, 10, (6,), generator=g, dtype=torch.int64)
    ll = leaf(logits)
    ce_hard = F.cross_entropy(ll, labels)
    (ce_hard_dlogits,) = torch.autograd.grad(ce_hard, ll)

    pred, feat = randn(g, 2, 5, 8), randn(g, 2, 5, 8)
    pl = leaf(pred)
    pn = pl / pl.norm(dim=-1, keepdim=True)
    fn = feat / feat.norm(dim=-1, keepdim=True)
    cos_loss = (2 - 2 * (pn * fn).sum(-1)).mean()
    (cos_dpred,) = torch.autograd.grad(cos_loss, pl)
    return dict(logits=logits, target=target, ce=ce, ce_dlogits=ce_dlogits,
                labels=labels, ce_hard=ce_hard, ce_hard_dlogits=ce_hard_dlogits,
                pred=pred, feat=feat, cos_loss=cos_loss, cos_dpred=cos_dpred)


def reductions():
    g = gen()
    x = randn(g, 3, 4, 5)
    gy_sum_last, gy_mean_mid = randn(g, 3, 4), randn(g, 3, 5)
    xl = leaf(x)
    sum_last = xl.sum(-1)
    (dsum_last,) = grads(sum_last, gy_sum_last, (xl,))
    xl = leaf(x)
    mean_mid = xl.mean(1)
    (dmean_mid,) = grads(mean_mid, gy_mean_mid, (xl,))
    return dict(x=x, sum_last=sum_last, gy_sum_last=gy_sum_last, dsum_last=dsum_last,
                mean_mid=mean_mid, gy_mean_mid=gy_mean_mid, dmean_mid=dmean_mid, sum_all=x.sum())


def elementwise():
    g = gen()
    a, b, bias, gy = randn(g, 4, 5), randn(g, 4, 5), randn(g, 5), randn(g, 4, 5)
    al, bl = leaf(a), leaf(b)
    mul = al * bl
    mul_da, mul_db = grads(mul, gy, (al, bl))
    al, biasl = leaf(a), leaf(bias)
    add_bias = al + biasl
    (add_bias_dbias,) = grads(add_bias, gy, (biasl,))
    return dict(a=a, b=b, bias=bias, gy=gy, add=a + b, mul=mul, mul_da=mul_da, mul_db=mul_db,
                add_bias=add_bias, add_bias_dbias=add_bias_dbias)


def tokens():
    """Token-axis data movement: scatter-add, class-token concatenation (broadcast over the batch), slicing, and
    an affine map."""
    g = gen()
    src = randn(g, 2, 4, 3)
    ids = torch.tensor([[5, 0, 2, 2], [1, 4, 3, 1]], dtype=torch.int64)  # repeats accumulate
    g_scatter = randn(g, 2, 6, 3)
    srcl = leaf(src)
    scatter = torch.zeros(2, 6, 3).scatter_add(1, ids.unsqueeze(-1).expand(-1, -1, 3), srcl)
    (dsrc,) = grads(scatter, g_scatter, (srcl,))
    cls, x = randn(g, 1, 1, 3), randn(g, 2, 6, 3)
    g_cat = randn(g, 2, 7, 3)
    clsl, xl = leaf(cls), leaf(x)
    cat = torch.cat([clsl.expand(2, -1, -1), xl], dim=1)
    dcls, dx_cat = grads(cat, g_cat, (clsl, xl))
    g_slice = randn(g, 2, 3, 3)
    xl = leaf(x)
    sl = xl[:, 1:4]
    (dx_slice,) = grads(sl, g_slice, (xl,))
    g_affine = randn(g, 2, 6, 3)
    xl = leaf(x)
    affine = -1.5 * xl + 0.25
    (dx_affine,) = grads(affine, g_affine, (xl,))
    return dict(src=src, ids=ids, scatter=scatter, g_scatter=g_scatter, dsrc=dsrc, cls=cls, x=x, cat=cat,
                g_cat=g_cat, dcls=dcls, dx_cat=dx_cat, slice=sl, g_slice=g_slice, dx_slice=dx_slice,
                affine=affine, g_affine=g_affine, dx_affine=dx_affine)


FILES = [matmul, activations, layernorm, softmax, attention, gather, patch_embed, losses, reductions, elementwise,
         tokens]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="print each written tensor's name, dtype and shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # single-threaded reductions: bit-identical output run to run
    os.makedirs(args.out, exist_ok=True)
    for fn in FILES:
        write_fixture(os.path.join(args.out, fn.__name__ + ".safetensors"), fn(), METADATA,
                      (torch.float32, torch.int64), 1 << 20, 18 if args.list else None, REPO, finite=False)


if __name__ == "__main__":
    main()
