#!/usr/bin/env python3
"""Writes the evaluation (linear probing / finetuning) fixtures described in tools/FIXTURES.md ("Evaluation fixtures").

Run with the pinned reference environment (tools/setup_reference_env.sh; same extras as make_model_fixtures.py,
whose helpers it imports):

    /work/venv-ref/bin/python tools/make_eval_fixtures.py [--out DIR] [--list]

Versions used to write the committed files: torch 2.13.0+cpu, timm 1.0.31, numpy 2.4.6, safetensors 0.8.0.

Output (Tests/Fixtures/eval/, reference-milan.md section 6):
  lars.safetensors                MAE / MoCo v3 LARS (util/lars.py): two 5-step runs (weight decay 0 and 0.05) and the
                                  zero-norm cases (q = 1)
  linprobe_head.safetensors       Sequential(BatchNorm1d(16, affine=False, eps=1e-6), Linear(16, 5)): train-mode forward,
                                  cross-entropy, gradients, running statistics, eval-mode forward
  layer_decay.json                MAE util/lr_decay.py param_groups_lrd on a depth-3 timm vit_tiny_patch16_224 (avg pool)
  mixup.safetensors               timm Mixup / CutMix (MILAN finetune settings) with the numpy draws it made, plus
                                  SoftTargetCrossEntropy, LabelSmoothingCrossEntropy and the smoothed one-hot target
  random_erasing.safetensors      timm RandomErasing(p=1, mode='pixel', max_count=1) with the python `random` draws

Every value is produced by the library that implements it (torch BatchNorm1d / CrossEntropyLoss, timm Mixup,
mixup_target, SoftTargetCrossEntropy, LabelSmoothingCrossEntropy, RandomErasing, param_groups_layer_decay) where one
exists, and cross-checked before writing against an independent re-implementation written here from the spec (LARS:
a torch optimizer written from the MoCo v3 formula vs a float64 numpy loop vs timm's Lars where the two coincide).
Random draws of numpy / python `random` are recorded by wrapping the module functions timm calls, then replayed by the
re-implementations. Deterministic: fixed seeds, float32 on CPU, one thread, canonical safetensors header; re-running
gives identical bytes (the script prints each file's sha256).
"""
import argparse
import json
import math
import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from make_model_fixtures import assert_close, gen, randn  # noqa: E402
from reference_compat import sha256_file, write_fixture  # noqa: E402

import timm  # noqa: E402  (make_model_fixtures already applied skip_torchvision_fakes)
from timm.data import Mixup  # noqa: E402
from timm.data.mixup import mixup_target  # noqa: E402
from timm.data.random_erasing import RandomErasing  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # noqa: E402
from timm.optim import Lars  # noqa: E402
from timm.optim._param_groups import param_groups_layer_decay  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "Fixtures", "eval")
BASE_METADATA = {"format": "pt", "generator": "tools/make_eval_fixtures.py", "torch": torch.__version__,
                 "timm": timm.__version__, "numpy": np.__version__}
MAX_BYTES = 300 * 1024


def f32(v):
    """The float32 value of a python float, as a python float (what PyTorch uses for a scalar on a float32 tensor)."""
    return float(np.float32(v))


# ----------------------------------------------------------------------------------------------- 1. LARS

LARS = dict(momentum=0.9, trust_coefficient=0.001, steps=5, lr_peak=3.2, weight_decays=[0.0, 0.05])
LARS_FORMULA = (
    "MoCo v3 / MAE util/lars.py, per parameter p with gradient g and momentum buffer mu (zeros at start): "
    "if p.ndim > 1: { d = g + weight_decay * p; q = trust_coefficient * ||p|| / ||d|| if ||p|| > 0 and ||d|| > 0 "
    "else 1; d = d * q } else d = g (1-D params: no weight decay, no trust ratio = plain momentum SGD); "
    "mu = momentum * mu + d; p = p - lr * mu. ||.|| = L2 norm over the whole tensor; ||d|| is taken AFTER adding "
    "the weight decay. float32 throughout (constants rounded to float32).")


class MocoLARS(torch.optim.Optimizer):
    """LARS as specified in reference-milan.md 6a (written from the formula, not copied)."""

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    pn, dn = p.norm(), d.norm()
                    q = group["trust_coefficient"] * pn / dn if (pn > 0 and dn > 0) else torch.ones(())
                    d = d * q
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(d)
                p.add_(state["mu"], alpha=-group["lr"])


def lars_run(w0, b0, gws, gbs, lrs, wd, opt="moco"):
    w, b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    if opt == "moco":
        o = MocoLARS([w, b], weight_decay=wd, momentum=LARS["momentum"],
                     trust_coefficient=LARS["trust_coefficient"])
    else:  # timm Lars configured to coincide with MoCo LARS when wd == 0 (eps 0, trust ratio on the weight only)
        assert wd == 0
        o = Lars([{"params": [w], "always_adapt": True, "eps": 0.0}, {"params": [b], "always_adapt": False}],
                 lr=0.0, momentum=LARS["momentum"], weight_decay=0.0, trust_coeff=LARS["trust_coefficient"],
                 foreach=False)
    ws, bs = [], []
    for s in range(len(lrs)):
        w.grad, b.grad = gws[s].clone(), gbs[s].clone()
        for group in o.param_groups:
            group["lr"] = lrs[s]
        o.step()
        ws.append(w.detach().clone())
        bs.append(b.detach().clone())
    return torch.stack(ws), torch.stack(bs)


def lars_float64(w0, b0, gws, gbs, lrs, wd):
    """Independent float64 loop of the same formula."""
    m, tc = LARS["momentum"], LARS["trust_coefficient"]
    w, b = w0.double().numpy().copy(), b0.double().numpy().copy()
    mw, mb = np.zeros_like(w), np.zeros_like(b)
    ws, bs = [], []
    for s in range(len(lrs)):
        d = gws[s].double().numpy() + wd * w
        pn, dn = np.sqrt((w * w).sum()), np.sqrt((d * d).sum())
        d = d * (tc * pn / dn if pn > 0 and dn > 0 else 1.0)
        mw = m * mw + d
        mb = m * mb + gbs[s].double().numpy()
        w = w - lrs[s] * mw
        b = b - lrs[s] * mb
        ws.append(w.copy())
        bs.append(b.copy())
    return torch.from_numpy(np.stack(ws)), torch.from_numpy(np.stack(bs))


def lars(ctx):
    g = gen(100)
    w0 = 0.05 * randn(g, 10, 16)
    b0 = 0.1 * randn(g, 10)
    gw = 0.02 * randn(g, 5, 10, 16)
    gb = 0.02 * randn(g, 5, 10)
    # linear warmup to 3.2 (MILAN ViT-B linprobe lr) over the 5 steps; float32 values are what the optimizer uses
    lrs = torch.tensor([LARS["lr_peak"] * (s + 1) / LARS["steps"] for s in range(LARS["steps"])], dtype=torch.float32)
    lr_list = [float(v) for v in lrs]
    out = {"w0": w0, "b0": b0, "gw": gw, "gb": gb, "lrs": lrs}
    for wd, tag in [(0.0, "wd0"), (0.05, "wd05")]:
        ws, bs = lars_run(w0, b0, gw, gb, lr_list, wd)
        w64, b64 = lars_float64(w0, b0, gw, gb, lr_list, wd)
        ctx[f"lars_{tag}_vs_f64"] = max(assert_close(f"lars {tag} w vs float64", ws.double(), w64, 2e-7),
                                        assert_close(f"lars {tag} b vs float64", bs.double(), b64, 2e-7))
        out[f"w_{tag}"], out[f"b_{tag}"] = ws, bs
    wt, bt = lars_run(w0, b0, gw, gb, lr_list, 0.0, opt="timm")
    ctx["lars_wd0_vs_timm"] = max(assert_close("lars wd0 vs timm Lars", out["w_wd0"], wt, 1e-8),
                                  assert_close("lars wd0 b vs timm Lars", out["b_wd0"], bt, 0.0))
    # the two weight-decay runs must differ in the weight (wd only reaches ndim > 1) and agree in the bias
    assert (out["w_wd0"] - out["w_wd05"]).abs().max() > 1e-6
    assert torch.equal(out["b_wd0"], out["b_wd05"])

    # zero-gradient case: weight gradient exactly 0 at steps 0 and 2, weight decay 0 -> ||d|| = 0 -> q = 1
    gw_zero = torch.stack([torch.zeros(10, 16), gw[1], torch.zeros(10, 16)])
    wz, _ = lars_run(w0, b0, gw_zero, gb[:3], lr_list[:3], 0.0)
    wz64, _ = lars_float64(w0, b0, gw_zero, gb[:3], lr_list[:3], 0.0)
    assert_close("lars zero-grad vs float64", wz.double(), wz64, 2e-7)
    assert torch.equal(wz[0], w0)  # no movement and no NaN from 0/0
    assert torch.isfinite(wz).all()
    out["gw_zero"], out["w_zero_after"] = gw_zero, wz
    # zero-parameter case: p = 0 -> q = 1 even with weight decay: one step moves p by -lr * g (unscaled)
    wp, _ = lars_run(torch.zeros(10, 16), b0, gw[:1], gb[:1], lr_list[:1], 0.05)
    assert_close("lars zero-param", wp[0], -lr_list[0] * gw[0], 1e-9)
    out["w_pzero_after"] = wp[0]

    config = dict(LARS, lrs=lr_list, runs={
        "wd0": "w0,b0 -> 5 steps with gw[s], gb[s], lrs[s], weight_decay 0 -> w_wd0[s], b_wd0[s] (params after step s)",
        "wd05": "same with weight_decay 0.05 -> w_wd05, b_wd05 (b_wd05 == b_wd0: 1-D params get no decay)",
        "zero": "w0,b0 -> 3 steps with gw_zero[s] (zeros at s=0 and s=2), gb[0:3], lrs[0:3], weight_decay 0 -> "
                "w_zero_after[s]; w_zero_after[0] == w0, step 2 moves by momentum only",
        "pzero": "w = zeros(10,16) -> 1 step with gw[0], lrs[0], weight_decay 0.05 -> w_pzero_after = -lrs[0]*gw[0]"})
    return out, {"config": json.dumps(config), "formula": LARS_FORMULA}


# ----------------------------------------------------------------------------------------------- 2. linprobe head

HEAD = dict(dim=16, classes=5, batch=8, eval_batch=4, bn_eps=1e-6, bn_momentum=0.1)


def linprobe_head(ctx):
    g = gen(200)
    D, C, N = HEAD["dim"], HEAD["classes"], HEAD["batch"]
    shift = torch.linspace(-1.0, 1.5, D)
    feats = 1.7 * randn(g, N, D) + 0.8 + shift
    labels = torch.tensor([0, 3, 1, 4, 2, 1, 3, 0], dtype=torch.int64)
    head_weight = 0.3 * randn(g, C, D)
    head_bias = 0.1 * randn(g, C)
    feats_eval = 1.7 * randn(g, HEAD["eval_batch"], D) + 0.8 + shift

    head = nn.Sequential(nn.BatchNorm1d(D, affine=False, eps=HEAD["bn_eps"], momentum=HEAD["bn_momentum"]),
                         nn.Linear(D, C))
    with torch.no_grad():
        head[1].weight.copy_(head_weight)
        head[1].bias.copy_(head_bias)
    head.train()
    x = feats.clone().requires_grad_(True)
    logits = head(x)
    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()
    head.eval()
    with torch.no_grad():
        logits_eval = head(feats_eval)

    # independent re-implementation
    mean = feats.mean(0)
    var_b = ((feats - mean) ** 2).mean(0)
    var_u = var_b * N / (N - 1)
    xhat = (feats - mean) / torch.sqrt(var_b + HEAD["bn_eps"])
    lg = xhat @ head_weight.t() + head_bias
    lsm = torch.log_softmax(lg, 1)
    ls = -lsm[torch.arange(N), labels].mean()
    dl = (lsm.exp() - F.one_hot(labels, C).float()) / N
    gwt, gbt = dl.t() @ xhat, dl.sum(0)
    dxh = dl @ head_weight
    gx = (dxh - dxh.mean(0) - xhat * (dxh * xhat).mean(0)) / torch.sqrt(var_b + HEAD["bn_eps"])
    rm = HEAD["bn_momentum"] * mean
    rv = (1 - HEAD["bn_momentum"]) * 1.0 + HEAD["bn_momentum"] * var_u
    le = (feats_eval - rm) / torch.sqrt(rv + HEAD["bn_eps"]) @ head_weight.t() + head_bias
    errs = [assert_close("head logits", logits, lg, 2e-6), assert_close("head loss", loss, ls, 1e-6),
            assert_close("head grad_weight", head[1].weight.grad, gwt, 1e-6),
            assert_close("head grad_bias", head[1].bias.grad, gbt, 1e-7),
            assert_close("head grad_feats", x.grad, gx, 1e-6),
            assert_close("running_mean", head[0].running_mean, rm, 1e-6),
            assert_close("running_var", head[0].running_var, rv, 1e-6),
            assert_close("logits_eval", logits_eval, le, 2e-6)]
    assert head[0].num_batches_tracked.item() == 1
    ctx["head_err"] = max(errs)
    out = {"feats": feats, "labels": labels, "head_weight": head_weight, "head_bias": head_bias,
           "logits": logits.detach(), "loss": loss.detach(), "grad_weight": head[1].weight.grad,
           "grad_bias": head[1].bias.grad, "grad_feats": x.grad, "running_mean": head[0].running_mean.clone(),
           "running_var": head[0].running_var.clone(), "feats_eval": feats_eval, "logits_eval": logits_eval}
    config = dict(HEAD, head="Sequential(BatchNorm1d(16, affine=False, eps=1e-6, momentum=0.1), Linear(16, 5))",
                  loss="CrossEntropyLoss() (mean over the batch)", running_start="running_mean 0, running_var 1")
    formula = ("train: mu = mean_n(f), v = mean_n((f-mu)^2) (biased), xhat = (f-mu)/sqrt(v+1e-6), logits = xhat W^T + b; "
               "running_mean = 0.9*0 + 0.1*mu, running_var = 0.9*1 + 0.1*v*N/(N-1) (UNBIASED, N=8); "
               "eval: logits_eval = ((f-running_mean)/sqrt(running_var+1e-6)) W^T + b; "
               "grad_feats = (dxhat - mean_n(dxhat) - xhat*mean_n(dxhat*xhat)) / sqrt(v+1e-6), dxhat = dlogits W, "
               "dlogits = (softmax(logits) - onehot(labels)) / N")
    return out, {"config": json.dumps(config), "formula": formula}


# ----------------------------------------------------------------------------------------------- 3. layer decay

LRD = dict(model="vit_tiny_patch16_224", depth=3, global_pool="avg", num_classes=7, layer_decay=0.65,
           weight_decay=0.05)


def mae_layer_id(name, num_layers):
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_decay_json(ctx):
    torch.manual_seed(0)
    model = timm.create_model(LRD["model"], pretrained=False, depth=LRD["depth"], global_pool=LRD["global_pool"],
                              num_classes=LRD["num_classes"])
    num_layers = len(model.blocks) + 1
    scales = [LRD["layer_decay"] ** (num_layers - i) for i in range(num_layers + 1)]
    no_wd = ["pos_embed", "cls_token"]
    params, groups = [], {}
    for name, p in model.named_parameters():
        lid = mae_layer_id(name, num_layers)
        decay = not (p.ndim == 1 or name in no_wd)
        wd = LRD["weight_decay"] if decay else 0.0
        params.append({"name": name, "shape": list(p.shape), "layer_id": lid, "lr_scale": scales[lid],
                       "weight_decay": wd})
        gname = f"layer_{lid}_{'decay' if decay else 'no_decay'}"
        groups.setdefault(gname, {"name": gname, "lr_scale": scales[lid], "weight_decay": wd, "params": []})
        groups[gname]["params"].append(name)
    # cross-check against timm's own BEiT-style implementation (group_matcher based)
    by_id = {id(p): n for n, p in model.named_parameters()}
    timm_groups = param_groups_layer_decay(model, weight_decay=LRD["weight_decay"],
                                           no_weight_decay_list=model.no_weight_decay(),
                                           layer_decay=LRD["layer_decay"])
    seen = 0
    mine = {e["name"]: e for e in params}
    for tg in timm_groups:
        for p in tg["params"]:
            e = mine[by_id[id(p)]]
            assert abs(e["lr_scale"] - tg["lr_scale"]) < 1e-15, (e, tg["lr_scale"])
            assert e["weight_decay"] == tg["weight_decay"], (e, tg["weight_decay"])
            seen += 1
    assert seen == len(params)
    names = [e["name"] for e in params]
    assert "fc_norm.weight" in names and not any(n.startswith("norm.") for n in names)
    config = dict(LRD, timm=timm.__version__, generator="tools/make_eval_fixtures.py",
                  create_model=f"timm.create_model('{LRD['model']}', pretrained=False, depth=3, global_pool='avg', "
                               "num_classes=7)",
                  num_layers=num_layers, layer_scales=scales, no_weight_decay_list=no_wd,
                  rule=("num_layers = len(blocks) + 1; layer_id: cls_token, pos_embed, patch_embed.* -> 0; "
                        "blocks.k.* -> k+1; everything else (fc_norm, head) -> num_layers; "
                        "lr_scale = layer_decay ** (num_layers - layer_id); weight_decay 0 if p.ndim == 1 or name in "
                        "no_weight_decay_list else weight_decay; group lr = lr * lr_scale"),
                  order=("params: timm 1.0.31 named_parameters order (root parameters first, then patch_embed, "
                         "blocks, fc_norm, head). MAE models_vit (timm 0.3.2 subclass) registers fc_norm after head, "
                         "so there head.* precede fc_norm.*; the per-name values are identical."))
    return {"config": config, "params": params, "groups": list(groups.values())}


# ----------------------------------------------------------------------------------------------- 4. mixup

MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5, mode="batch",
             correct_lam=True, label_smoothing=0.1, num_classes=10)
MIX_SEED, CUT_SEED, CUTR_SEED = 0, 33, 44   # numpy seeds: Mixup branch; CutMix 16x16; CutMix 12x20


class NumpyDrawLog:
    """Wraps np.random.rand / beta / randint (the module functions timm's Mixup calls) and records each call."""

    def __enter__(self):
        self.calls = []
        self.saved = {k: getattr(np.random, k) for k in ("rand", "beta", "randint")}
        for k, fn in self.saved.items():
            def wrapped(*a, _k=k, _fn=fn, **kw):
                r = _fn(*a, **kw)
                self.calls.append((_k, a, kw, r))
                return r
            setattr(np.random, k, wrapped)
        return self

    def __exit__(self, *exc):
        for k, fn in self.saved.items():
            setattr(np.random, k, fn)


def run_mixup(x, y, seed):
    mixer = Mixup(**MIXUP)
    np.random.seed(seed)
    with NumpyDrawLog() as log:
        xo, t = mixer(x.clone(), y.clone())
    return xo, t, log.calls


def one_hot_smooth(y, C, smoothing):
    off = smoothing / C
    on = 1.0 - smoothing + off
    return torch.full((len(y), C), off, dtype=torch.float32).scatter_(1, y.view(-1, 1), on)


def my_target(y, lam):
    y1 = one_hot_smooth(y, MIXUP["num_classes"], MIXUP["label_smoothing"])
    return y1 * lam + y1.flip(0) * (1.0 - lam)


def my_box(H, W, lam, cy, cx, v032=False):
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(H * ratio), int(W * ratio)
    hi_h, hi_w = (ch // 2, cw // 2) if v032 else ((ch + 1) // 2, (cw + 1) // 2)
    clip = lambda v, n: min(max(v, 0), n)  # noqa: E731
    yl, yh = clip(cy - ch // 2, H), clip(cy + hi_h, H)
    xl, xh = clip(cx - cw // 2, W), clip(cx + hi_w, W)
    return (yl, yh, xl, xh), 1.0 - (yh - yl) * (xh - xl) / float(H * W), (ch, cw)


def my_cutmix(x, box):
    yl, yh, xl, xh = box
    out = x.clone()
    out[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
    return out


def cutmix_case(prefix, x, y, seed, ctx):
    xo, t, calls = run_mixup(x, y, seed)
    kinds = [c[0] for c in calls]
    assert kinds == ["rand", "rand", "beta", "randint", "randint"], kinds
    r1, r2, lam_raw = float(calls[0][3]), float(calls[1][3]), float(calls[2][3])
    assert calls[2][1] == (1.0, 1.0) and r2 < MIXUP["switch_prob"]   # CutMix branch, Beta(1, 1)
    H, W = x.shape[-2:]
    assert calls[3][1] == (0, H) and calls[4][1] == (0, W), (calls[3], calls[4])
    cy, cx = int(calls[3][3]), int(calls[4][3])
    box, lam, (ch, cw) = my_box(H, W, lam_raw, cy, cx)
    box0, lam0, _ = my_box(H, W, lam_raw, cy, cx, v032=True)
    # replay: images bit-exact, target to float32 rounding
    assert torch.equal(xo, my_cutmix(x, box)), prefix
    assert_close(prefix + " target", t, my_target(y, lam), 1e-7)
    assert box != box0, "pick a seed where the timm 1.0.31 and 0.3.2 boxes differ"
    clipped = cy - ch // 2 < 0 or cy + (ch + 1) // 2 > H or cx - cw // 2 < 0 or cx + (cw + 1) // 2 > W
    assert clipped, "pick a seed whose box is clipped by the border (correct_lam matters)"
    ctx[prefix] = dict(seed=seed, lam_raw=lam_raw, cut_hw=[ch, cw], cy=cy, cx=cx, box=list(box), lam=lam,
                       box_t032=list(box0), lam_t032=lam0)
    i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    d64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {f"{prefix}_rand": d64([r1, r2]), f"{prefix}_lam_raw": d64(lam_raw), f"{prefix}_cy": i64(cy),
            f"{prefix}_cx": i64(cx), f"{prefix}_box": i64(list(box)), f"{prefix}_lam": d64(lam),
            f"{prefix}_x": xo, f"{prefix}_target": t,
            f"{prefix}_box_t032": i64(list(box0)), f"{prefix}_lam_t032": d64(lam0),
            f"{prefix}_x_t032": my_cutmix(x, box0), f"{prefix}_target_t032": my_target(y, lam0)}


def mixup(ctx):
    g = gen(300)
    x = randn(g, 4, 3, 16, 16)
    x_rect = randn(g, 4, 3, 12, 20)
    y = torch.tensor([3, 7, 0, 9], dtype=torch.int64)
    logits = 2.0 * randn(g, 4, 10)
    out = {"x": x, "y": y, "x_rect": x_rect}

    # (a) Mixup branch
    xo, t, calls = run_mixup(x, y, MIX_SEED)
    assert [c[0] for c in calls] == ["rand", "rand", "beta"], calls
    r1, r2, lam = float(calls[0][3]), float(calls[1][3]), float(calls[2][3])
    assert r1 < MIXUP["prob"] and r2 >= MIXUP["switch_prob"] and calls[2][1] == (0.8, 0.8)
    mine = x * f32(lam) + x.flip(0) * f32(1.0 - lam)   # PyTorch rounds python-float scalars to float32
    assert torch.equal(xo, mine), (xo - mine).abs().max()
    assert_close("mixup target", t, my_target(y, lam), 1e-7)
    ctx["mixup"] = dict(seed=MIX_SEED, lam=lam)
    out.update({"mix_rand": torch.tensor([r1, r2], dtype=torch.float64),
                "mix_lam": torch.tensor(lam, dtype=torch.float64), "mix_x": xo, "mix_target": t})
    # (b) CutMix 16x16 and (c) CutMix 12x20
    out.update(cutmix_case("cut", x, y, CUT_SEED, ctx))
    out.update(cutmix_case("cutr", x_rect, y, CUTR_SEED, ctx))

    # losses
    out["logits"] = logits
    lg = logits.clone().requires_grad_(True)
    sce = SoftTargetCrossEntropy()(lg, out["mix_target"])
    sce.backward()
    p = torch.softmax(logits, 1)
    assert_close("sce", sce, (-(out["mix_target"] * torch.log_softmax(logits, 1)).sum(1)).mean(), 1e-6)
    assert_close("sce grad", lg.grad, (p * out["mix_target"].sum(1, keepdim=True) - out["mix_target"]) / 4, 1e-7)
    out["sce_loss"], out["sce_dlogits"] = sce.detach(), lg.grad.clone()
    lg = logits.clone().requires_grad_(True)
    ls = LabelSmoothingCrossEntropy(smoothing=0.1)(lg, y)
    ls.backward()
    smooth = mixup_target(y, 10, lam=1.0, smoothing=0.1)
    assert torch.equal(smooth, one_hot_smooth(y, 10, 0.1))
    lsm = torch.log_softmax(logits, 1)
    assert_close("ls loss", ls, (0.9 * -lsm[torch.arange(4), y] + 0.1 * -lsm.mean(1)).mean(), 1e-6)
    assert_close("ls == sce(smooth)", ls, SoftTargetCrossEntropy()(logits, smooth), 1e-6)
    assert_close("ls == F.cross_entropy(label_smoothing)", ls, F.cross_entropy(logits, y, label_smoothing=0.1), 1e-6)
    assert_close("ls grad", lg.grad, (p - smooth) / 4, 1e-7)
    out["ls_loss"], out["ls_dlogits"], out["smooth_target"] = ls.detach(), lg.grad.clone(), smooth

    config = dict(MIXUP, seeds=dict(mix=MIX_SEED, cut=CUT_SEED, cutr=CUTR_SEED), cases=ctx["mixup"],
                  cut=ctx["cut"], cutr=ctx["cutr"], batch_partner="x.flip(0)")
    formula = (
        "draws (mode='batch', numpy global RandomState): r1 = np.random.rand() [apply iff r1 < prob]; "
        "r2 = np.random.rand() [CutMix iff r2 < switch_prob]; lam = np.random.beta(1,1) if CutMix else "
        "np.random.beta(0.8,0.8); CutMix only: cy = np.random.randint(0, H), cx = np.random.randint(0, W). "
        "Mixup: x' = x*f32(lam) + x.flip(0)*f32(1-lam). CutMix (timm 1.0.31): r = sqrt(1-lam); cut_h = int(H*r), "
        "cut_w = int(W*r); yl = clip(cy - cut_h//2, 0, H), yh = clip(cy + (cut_h+1)//2, 0, H), xl = clip(cx - "
        "cut_w//2, 0, W), xh = clip(cx + (cut_w+1)//2, 0, W); x'[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]; "
        "lam = 1 - (yh-yl)*(xh-xl)/(H*W) (correct_lam). timm 0.3.2 (MILAN pin): yh = clip(cy + cut_h//2), "
        "xh = clip(cx + cut_w//2) (the *_t032 keys). Target: off = 0.1/10, on = 1 - 0.1 + off, "
        "t = lam*onehot(y) + (1-lam)*onehot(y.flip(0)). SoftTargetCE = mean_n sum_c -t*log_softmax(x); "
        "LabelSmoothingCE(0.1) = mean_n (0.9*(-logp[y]) + 0.1*mean_c(-logp)) = SoftTargetCE(x, smooth_target).")
    return out, {"config": json.dumps(config), "formula": formula}


# ----------------------------------------------------------------------------------------------- 5. random erasing

ERASE = dict(probability=1.0, mode="pixel", max_count=1, min_count=1, min_area=0.02, max_area=1 / 3, min_aspect=0.3,
             attempts=10, device="cpu")
# (shape, python `random` seed, torch seed for the N(0,1) fill); case 3 fails its first two attempts
ERASE_CASES = [((3, 32, 32), 0, 1000), ((3, 24, 40), 1, 1001), ((3, 16, 16), 2, 1002), ((3, 24, 40), 36, 1003)]


class PyRandomLog:
    """Wraps random.random / uniform / randint (the module functions timm's RandomErasing calls)."""

    def __enter__(self):
        self.calls = []
        self.saved = {k: getattr(random, k) for k in ("random", "uniform", "randint")}
        for k, fn in self.saved.items():
            def wrapped(*a, _k=k, _fn=fn):
                r = _fn(*a)
                self.calls.append((_k, a, r))
                return r
            setattr(random, k, wrapped)
        return self

    def __exit__(self, *exc):
        for k, fn in self.saved.items():
            setattr(random, k, fn)


def replay_erasing(H, W, uniforms, randints):
    """Independent replay of timm's sampling from the recorded draws: returns (box, failed attempts)."""
    area = H * W
    failed = 0
    for a in range(ERASE["attempts"]):
        target_area = uniforms[2 * a] * area / 1
        aspect = math.exp(uniforms[2 * a + 1])
        h = int(round(math.sqrt(target_area * aspect)))   # python round: half to even
        w = int(round(math.sqrt(target_area / aspect)))
        if w < W and h < H:
            top, left = randints
            assert 0 <= top <= H - h and 0 <= left <= W - w
            assert len(uniforms) == 2 * (a + 1)
            return (top, left, h, w), failed
        failed += 1
    raise AssertionError("no box")


def random_erasing(ctx):
    g = gen(400)
    eraser = RandomErasing(probability=ERASE["probability"], mode=ERASE["mode"], max_count=ERASE["max_count"],
                           device=ERASE["device"])
    out, info = {}, []
    lo, hi = math.log(ERASE["min_aspect"]), math.log(1 / ERASE["min_aspect"])
    assert eraser.log_aspect_ratio == (lo, hi) and eraser.max_count == 1 and eraser.min_count == 1
    for i, (shape, seed, tseed) in enumerate(ERASE_CASES):
        x = randn(g, *shape)
        random.seed(seed)
        torch.manual_seed(tseed)
        with PyRandomLog() as log:
            y = eraser(x.clone())
        calls = log.calls
        assert calls[0][0] == "random" and calls[0][2] <= ERASE["probability"]
        uni = [c for c in calls if c[0] == "uniform"]
        ri = [c for c in calls if c[0] == "randint"]
        assert [c[0] for c in calls] == ["random"] + ["uniform"] * len(uni) + ["randint"] * 2
        for j, c in enumerate(uni):
            assert c[1] == ((ERASE["min_area"], ERASE["max_area"]) if j % 2 == 0 else (lo, hi)), c
        uniforms = [float(c[2]) for c in uni]
        randints = [int(c[2]) for c in ri]
        (top, left, h, w), failed = replay_erasing(shape[1], shape[2], uniforms, randints)
        assert ri[0][1] == (0, shape[1] - h) and ri[1][1] == (0, shape[2] - w)
        # outside the box unchanged, inside = torch N(0,1) draws from the same torch seed
        torch.manual_seed(tseed)
        fill = torch.empty(shape[0], h, w).normal_()
        exp = x.clone()
        exp[:, top:top + h, left:left + w] = fill
        assert torch.equal(y, exp), i
        assert (failed >= 1) == (i == 3), (i, failed)
        info.append(dict(case=i, shape=list(shape), random_seed=seed, torch_seed=tseed, failed_attempts=failed,
                         box=[top, left, h, w]))
        out.update({f"case{i}_random": torch.tensor([calls[0][2]], dtype=torch.float64),
                    f"case{i}_uniforms": torch.tensor(uniforms, dtype=torch.float64),
                    f"case{i}_randints": torch.tensor(randints, dtype=torch.int64),
                    f"case{i}_box": torch.tensor([top, left, h, w], dtype=torch.int64),
                    f"case{i}_x": x, f"case{i}_y": y})
    ctx["erase"] = info
    config = dict(ERASE, log_aspect_ratio=[lo, hi], cases=info)
    formula = (
        "per image [C,H,W] (python `random` module): if random.random() > probability: return; count = 1 "
        "(min_count == max_count, no draw); for attempt in range(10): target_area = random.uniform(0.02, 1/3) * H*W "
        "/ count; aspect = exp(random.uniform(log(0.3), log(1/0.3))); h = int(round(sqrt(target_area*aspect))); "
        "w = int(round(sqrt(target_area/aspect))) (round half to even); if w < W and h < H: top = "
        "random.randint(0, H-h); left = random.randint(0, W-w) (inclusive); img[:, top:top+h, left:left+w] = "
        "torch.empty(C,h,w).normal_(); break. random.uniform(a,b) = a + (b-a)*random.random().")
    return out, {"config": json.dumps(config), "formula": formula}


FILES = [lars, linprobe_head, mixup, random_erasing]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="print each written tensor's name, dtype and shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # single-threaded reductions: bit-identical output run to run
    os.makedirs(args.out, exist_ok=True)
    ctx = {}
    total = 0
    for fn in FILES:
        result, extra = fn(ctx)
        size, _ = write_fixture(os.path.join(args.out, fn.__name__ + ".safetensors"), result,
                                {**BASE_METADATA, **extra}, (torch.float32, torch.float64, torch.int64), MAX_BYTES,
                                28 if args.list else None, REPO)
        total += size
    path = os.path.join(args.out, "layer_decay.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(layer_decay_json(ctx), indent=1) + "\n")
    size = os.path.getsize(path)
    assert size < MAX_BYTES
    total += size
    print(f"wrote {os.path.relpath(path, REPO)} ({size} bytes) sha256 {sha256_file(path)}", file=sys.stderr)
    print(f"total {total} bytes; LARS vs float64: wd0 {ctx['lars_wd0_vs_f64']:.3g}, wd05 {ctx['lars_wd05_vs_f64']:.3g}; "
          f"LARS wd0 vs timm Lars {ctx['lars_wd0_vs_timm']:.3g}; head vs explicit {ctx['head_err']:.3g}; "
          f"mixup {ctx['mixup']}; cut {ctx['cut']}; cutr {ctx['cutr']}; erase {ctx['erase']}", file=sys.stderr)


if __name__ == "__main__":
    main()
