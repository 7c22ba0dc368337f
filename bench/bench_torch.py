#!/usr/bin/env python3
"""PyTorch twin of the Swift kernel benchmark: times the ops listed in bench/configs.json, float32 on CPU.

    /work/venv-ref/bin/python bench/bench_torch.py --out bench/results/torch.json [--only gemm] [--threads N]

Timing (identical to the Swift bench): 3 warm-up calls, then repeat until at least 0.5 s (4 s for the MILAN-step
and teacher rows) and at least 10 calls have run; report the best and the median per-call time in ms. Inputs are
allocated outside the timed region; outputs (and, for fwdbwd, gradients) are allocated inside it, as a training step would.
Config strings and op names are shared with the Swift bench and must stay byte-identical.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from reference_compat import skip_torchvision_fakes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WARMUP = 3
MIN_CALLS = 10
MIN_SECONDS = 0.5
# The MILAN-step and teacher rows time at least this long (the host's slow spells last about 2 s; see timeOp in
# bench/Sources/milan-bench/MilanBench.swift, which uses the same numbers).
WHOLE_MODEL_SECONDS = 4.0


def time_op(fn, reset=None, min_seconds=MIN_SECONDS):
    """Returns (best_ms, median_ms, calls). `reset` (untimed) runs before every call."""
    for _ in range(WARMUP):
        if reset:
            reset()
        fn()
    times = []
    total = 0.0
    while len(times) < MIN_CALLS or total < min_seconds:
        if reset:
            reset()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return min(times) * 1e3, statistics.median(times) * 1e3, len(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def randn(*shape, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float32).requires_grad_(requires_grad)


def clear_grads(*ts):
    def reset():
        for t in ts:
            t.grad = None
    return reset


# Each generator yields (op, config, fn, reset, flops_or_None).

def gemm_cases(cfg):
    for M, N, K in cfg.get("gemm", []):
        conf = f"M={M} N={N} K={K}"
        flops = 2.0 * M * N * K
        X, W, dY = randn(M, K), randn(N, K), randn(M, N)
        yield "gemm_fwd", conf, lambda X=X, W=W: torch.mm(X, W.t()), None, flops
        yield "gemm_dx", conf, lambda dY=dY, W=W: torch.mm(dY, W), None, flops
        yield "gemm_dw", conf, lambda dY=dY, X=X: torch.mm(dY.t(), X), None, flops


def attention_cases(cfg):
    for c in cfg.get("attention", []):
        B, H, Dh, Lq, Lk = c["B"], c["H"], c["Dh"], c["Lq"], c["Lk"]
        conf = f"B={B} H={H} Dh={Dh} Lq={Lq} Lk={Lk}"
        q, k, v = randn(B, H, Lq, Dh), randn(B, H, Lk, Dh), randn(B, H, Lk, Dh)

        def fwd(q=q, k=k, v=v):
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v)
        yield "attn_fwd", conf, fwd, None, None

        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        go = randn(B, H, Lq, Dh)

        def fwdbwd(q=qg, k=kg, v=vg, go=go):
            F.scaled_dot_product_attention(q, k, v).backward(go)
        yield "attn_fwdbwd", conf, fwdbwd, clear_grads(qg, kg, vg), None


def layernorm_cases(cfg):
    for rows, D in cfg.get("layernorm", []):
        conf = f"rows={rows} D={D}"
        x, w, b = randn(rows, D), 1 + 0.1 * randn(D), 0.1 * randn(D)

        def fwd(x=x, w=w, b=b, D=D):
            with torch.no_grad():
                return F.layer_norm(x, (D,), w, b, eps=1e-6)
        yield "layernorm_fwd", conf, fwd, None, None

        xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        gy = randn(rows, D)

        def fwdbwd(x=xg, w=wg, b=bg, gy=gy, D=D):
            F.layer_norm(x, (D,), w, b, eps=1e-6).backward(gy)
        yield "layernorm_fwdbwd", conf, fwdbwd, clear_grads(xg, wg, bg), None


def unary_cases(cfg, key, name, dimname, f):
    for rows, D in cfg.get(key, []):
        conf = f"rows={rows} {dimname}={D}"
        x = randn(rows, D)

        def fwd(x=x):
            with torch.no_grad():
                return f(x)
        yield f"{name}_fwd", conf, fwd, None, None

        xg = x.detach().clone().requires_grad_(True)
        gy = randn(rows, D)

        def fwdbwd(x=xg, gy=gy):
            f(x).backward(gy)
        yield f"{name}_fwdbwd", conf, fwdbwd, clear_grads(xg), None


def clip_milan_forward(v, img):
    """MILAN's teacher forward on an open_clip visual tower (reference-milan.md section 1): ln_post and proj on every
    token, and the last block's head-averaged attention (class-token row, class column dropped). Same work as the
    Swift CLIPVisionTeacher.encode."""
    x = v.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    x = v.ln_pre(x)
    blocks = v.transformer.resblocks
    batch_first = getattr(v.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    h = last.ln_1(x)
    a, w = last.attn(h, h, h, need_weights=True, average_attn_weights=True)
    x = x + last.ls_1(a)
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    if not batch_first:
        x = x.transpose(0, 1)
    feats = v.ln_post(x) @ v.proj
    return feats, w[:, 0, 1:]


def teacher_cases(cfg):
    for t in cfg.get("teachers", []):
        conf = f"{t['name']} B={t['batch']} {t['image']}px"
        img = randn(t["batch"], 3, t["image"], t["image"])
        if t["name"] == "clip_vit_b16":
            skip_torchvision_fakes()
            import open_clip
            model = open_clip.create_model("ViT-B-16", pretrained=None)  # random weights; speed is the same
            v = model.visual.eval()

            def fwd(v=v, img=img):
                with torch.no_grad():
                    clip_milan_forward(v, img)
            yield "teacher_fwd", conf, fwd, None, None
        elif t["name"] == "dinov2_s14":
            from transformers import Dinov2Config, Dinov2Model
            c = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                             image_size=518, layer_norm_eps=1e-6)
            c._attn_implementation = "eager"
            # Eager attention so the last layer's probabilities can be returned (the teacher needs them); this
            # returns them for every layer, the Swift side only for the last.
            m = Dinov2Model(c, add_pooling_layer=False) if "add_pooling_layer" in Dinov2Model.__init__.__code__.co_varnames else Dinov2Model(c)
            m = m.eval()

            def fwd(m=m, img=img):
                with torch.no_grad():
                    out = m(pixel_values=img, output_attentions=True)
                    out.attentions[-1].mean(1)[:, 0, 1:]
            yield "teacher_fwd", conf, fwd, None, None


def milan_step_cases(cfg, only_step=None):
    """One MILAN training step with the reference model (tools/milan_reference.py): teacher forward under no_grad,
    semantic-aware masking from Exp(1) draws, encoder, prompting decoder, 2 - 2cos loss, backward, AdamW step."""
    steps = cfg.get("milan_steps", [])
    if not steps:
        return
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
    import milan_reference as ref
    for st in steps:
        if only_step and st["name"] != only_step:
            continue
        conf = f"{st['name']} B={st['batch']} {st['image']}px"
        model = ref.MaskedAutoencoderViT(
            img_size=st["image"], patch_size=st["patch"], embed_dim=st["embed"], depth=st["depth"],
            num_heads=st["heads"], decoder_embed_dim=st["dec_dim"], decoder_depth=st["dec_depth"],
            decoder_num_heads=st["dec_heads"], use_clip=True, attn_mask=True, change_decoder=True,
            pred_dim=st["pred_dim"])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                                weight_decay=0.05)
        simgs = randn(st["batch"], 3, st["image"], st["image"])
        timgs = simgs if st["teacher_image"] == st["image"] else randn(st["batch"], 3, st["teacher_image"],
                                                                         st["teacher_image"])
        L = (st["image"] // st["patch"]) ** 2
        if st["teacher"] == "clip_vit_b16":
            skip_torchvision_fakes()
            import open_clip
            v = open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()

            def teach(x, v=v):
                return clip_milan_forward(v, x)
        else:
            from transformers import Dinov2Config, Dinov2Model
            c = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                             image_size=518, layer_norm_eps=1e-6)
            c._attn_implementation = "eager"
            m = Dinov2Model(c).eval()

            def teach(x, m=m):
                out = m(pixel_values=x, output_attentions=True)
                return out.last_hidden_state, out.attentions[-1].mean(1)[:, 0, 1:]

        cached = None
        if st.get("cached_targets"):  # as `milan pretrain` without augmentation: teacher outputs computed once
            with torch.no_grad():
                cached = teach(timgs)

        phases = []  # one dict of phase times (ms) per call; PyTorch on the CPU is synchronous, so timers are exact

        def step(model=model, opt=opt, simgs=simgs, timgs=timgs, L=L, teach=teach, B=st["batch"], cached=cached,
                 phases=phases):
            t = [time.perf_counter()]
            if cached is not None:
                target, importance = cached
            else:
                with torch.no_grad():
                    target, importance = teach(timgs)
            t.append(time.perf_counter())
            noise = torch.empty(B, L).exponential_()
            # model.forward, split at its phases (reference forward: encoder with masking, decoder, loss)
            latent, mask, ids_restore, ids_shuffle, ids_keep, ids_dump = model.forward_encoder(
                simgs, 0.75, noise, importance)
            t.append(time.perf_counter())
            pred = model.forward_decoder(latent, ids_restore, ids_keep, ids_dump)
            t.append(time.perf_counter())
            loss = model.forward_loss(simgs, pred, mask, target)
            t.append(time.perf_counter())
            loss.backward()
            t.append(time.perf_counter())
            opt.step()
            opt.zero_grad()
            t.append(time.perf_counter())
            names = ("teacher", "encoder", "decoder", "loss", "backward", "optimizer")
            phases.append({n: (b - a) * 1e3 for n, a, b in zip(names, t, t[1:])})
        step.phases = phases
        yield "milan_step", conf, step, None, None


def all_cases(cfg, only_step=None):
    yield from gemm_cases(cfg)
    yield from attention_cases(cfg)
    yield from layernorm_cases(cfg)
    yield from unary_cases(cfg, "gelu", "gelu", "D", lambda x: F.gelu(x))
    yield from unary_cases(cfg, "softmax", "softmax", "L", lambda x: torch.softmax(x, dim=-1))
    yield from teacher_cases(cfg)
    yield from milan_step_cases(cfg, only_step)


def sdpa_kernels(cfg):
    """Which ATen kernels scaled_dot_product_attention dispatches to (first attention config), for the record."""
    atts = cfg.get("attention", [])
    if not atts:
        return None
    c = atts[0]
    q, k, v = (randn(2, c["H"], L, c["Dh"], requires_grad=True) for L in (c["Lq"], c["Lk"], c["Lk"]))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    names = sorted({e.key for e in prof.key_averages() if "attention" in e.key})
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(HERE, "configs.json"))
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--only", help="run only ops whose name starts with this prefix (e.g. gemm, attn_fwdbwd)")
    ap.add_argument("--threads", type=int, help="override the thread count from the config")
    ap.add_argument("--no-steps", action="store_true", help="skip the MILAN-step rows (bench/run.sh runs each in "
                    "its own process)")
    ap.add_argument("--step", help="run only the MILAN-step configuration of this name (one per process keeps max "
                    "RSS per configuration)")
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = json.load(f)
    threads = args.threads or cfg.get("threads") or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    want_attn = not args.only or any(op.startswith(args.only) for op in ("attn_fwd", "attn_fwdbwd"))
    kernels = sdpa_kernels(cfg) if want_attn else None
    if kernels:
        print(f"sdpa kernels: {', '.join(kernels)}", file=sys.stderr)

    results = []
    t_start = time.perf_counter()
    for op, conf, fn, reset, flops in all_cases(cfg, args.step):
        if args.no_steps and op == "milan_step":
            break
        if args.only and not op.startswith(args.only):
            continue
        whole = op in ("teacher_fwd", "milan_step")
        best, median, calls = time_op(fn, reset, WHOLE_MODEL_SECONDS if whole else MIN_SECONDS)
        gflops = round(flops / (best * 1e-3) / 1e9, 2) if flops else None
        row = {"op": op, "config": conf, "best_ms": round(best, 4), "median_ms": round(median, 4), "gflops": gflops}
        if op in ("teacher_fwd", "milan_step"):
            row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if hasattr(fn, "phases"):
            timed = fn.phases[WARMUP:]
            row["phases_ms"] = {k: round(statistics.median(p[k] for p in timed), 3) for k in timed[0]}
            print("  phases (median ms): " + ", ".join(f"{k} {v:.0f}" for k, v in row["phases_ms"].items()),
                  file=sys.stderr)
        results.append(row)
        extra = f"  {gflops:8.1f} GFLOP/s" if gflops else ""
        print(f"{op:18s} {conf:34s} best {best:10.3f} ms  median {median:10.3f} ms  ({calls} calls){extra}",
              file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start
    print(f"{len(results)} results in {elapsed:.1f} s", file=sys.stderr)

    doc = {
        "framework": "pytorch",
        "version": torch.__version__,
        "threads": threads,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": cpu_model(),
        "sdpa_kernels": kernels,
        "results": results,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    else:
        json.dump(doc, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
