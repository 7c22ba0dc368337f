#!/usr/bin/env python3
"""Builds docs/benchmarks.md from the Swift and PyTorch benchmark JSON files of alternating rounds.

    python3 bench/report.py --swift bench/results/swift.1.json ... --torch bench/results/torch.1.json ... \
        --torch-peak bench/results/peak.1.json ... --out docs/benchmarks.md

A file's round is the number after `swift.`, `torch.` or `peak.` in its name (bench/run.sh names them so); one
round may have several files per side (the kernel rows, and one process per MILAN-step configuration).

Per row and round: each side's best call, its GFLOP/s on the row's work (the FLOP formulas of FLOPs.swift and of
the Swift bench, documented in docs/benchmarks.md) and its % of the FP32 FMA peak of that round: the highest of the
round's peak measurements (every Swift process measures it before and after its rows, and `milan-bench --peak-only`
right before the PyTorch processes). A measurement taken while the shared host held a core reads low (one all-thread
figure of 117 GFLOP/s on two cores, 2026-11-30), and a low peak would inflate every % of that round.
The tables give the median over the rounds of those per-round values, and the speed-up's median and range over the
rounds (PyTorch best / Swift best of the same round). The targets of issue 13 are checked at the end.

Re-runnable: the generated part of the output file is replaced; everything below the line `<!-- notes -->` in an
existing output file is kept verbatim. Standard library only.
"""
import argparse
import json
import os
import re
import statistics
import sys

NOTES_MARKER = "<!-- notes -->"
RAW_SUFFIX = "_rawblas"
FAMILIES = [  # (title, op prefix)
    ("GEMM", "gemm_"),
    ("Attention (scaled dot-product)", "attn_"),
    ("LayerNorm", "layernorm_"),
    ("GELU (exact erf)", "gelu_"),
    ("Softmax (last dim)", "softmax_"),
    ("Teacher forward (features of every token + last-block class attention)", "teacher_"),
    ("One MILAN training step (teacher forward, masking, encoder, prompting decoder, loss, backward, AdamW)",
     "milan_step"),
]
PHASES = ["teacher", "encoder", "decoder", "loss", "backward", "optimizer"]


def round_of(path):
    m = re.search(r"(?:swift|torch|peak)\.(\d+)", os.path.basename(path))
    if not m:
        sys.exit(f"report.py: cannot tell the round of {path} (expected swift.N…, torch.N… or peak.N…)")
    return int(m.group(1))


def load(path):
    with open(path) as f:
        return json.load(f)


class Side:
    """One framework's results: rows[(op, config)][round] = row (with its round's peak attached)."""

    def __init__(self, paths, peaks=None):
        self.rows, self.order, self.docs, self.peak = {}, [], {}, {}
        self.measured = {}  # round -> every peak measured in it (this side's processes and peak files)
        for p in peaks or []:
            d = load(p)
            if d.get("peak"):
                self.measured.setdefault(round_of(p), []).append(d["peak"])
        for p in paths:
            r, d = round_of(p), load(p)
            self.docs.setdefault(r, []).append(d)
            if d.get("peak"):
                self.measured.setdefault(r, []).append(d["peak"])
            for row in d.get("results", []):
                key = (row["op"], row["config"])
                if key not in self.rows:
                    self.rows[key] = {}
                    self.order.append(key)
                self.rows[key][r] = dict(row, _peak=None)  # the round's peak, set by use_round_peaks

    def use_round_peaks(self, peaks):
        """Every row of round r is measured against peaks[r] (the round's highest measurement)."""
        for r, p in peaks.items():
            self.peak[r] = p
        for rows in self.rows.values():
            for r, row in rows.items():
                if r in peaks:
                    row["_peak"] = peaks[r]

    def rounds(self, key):
        return self.rows.get(key, {})


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(flops, ms, peak):
    if not flops or not ms or not peak or not peak.get("allCoresGFLOPS"):
        return None
    return flops / (ms * 1e-3) / 1e9 / peak["allCoresGFLOPS"] * 100


def fmt_ms(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def fmt_pct(v):
    return "–" if v is None else f"{v:.0f} %"


def fmt_gf(f):
    if f is None:
        return "–"
    g = f / 1e9
    return f"{g:.1f}" if g >= 1 else (f"{g:.3f}" if g >= 0.01 else f"{g:.2g}")


def family_of(op):
    for title, prefix in FAMILIES:
        if op.startswith(prefix):
            return title
    return "Other"


class Row:
    """Per-round figures of one (op, config) on both sides, and their medians."""

    def __init__(self, key, swift, torch):
        self.key = key
        s, t = swift.rounds(key), torch.rounds(key)
        self.rounds = sorted(set(s) | set(t))
        any_row = next(iter(s.values()), None) or next(iter(t.values()), None)
        self.flops = next((x.get("flops") for x in s.values() if x.get("flops")), None)
        self.s_best = {r: s[r]["best_ms"] for r in s}
        self.t_best = {r: t[r]["best_ms"] for r in t}
        self.s_pct = {r: pct(self.flops, s[r]["best_ms"], s[r]["_peak"]) for r in s}
        self.t_pct = {r: pct(self.flops, t[r]["best_ms"], t[r]["_peak"]) for r in t}
        self.ratio = {r: t[r]["best_ms"] / s[r]["best_ms"] for r in self.rounds if r in s and r in t}
        self.s, self.t = s, t
        self.any = any_row

    def ratio_cell(self):
        if not self.ratio:
            return "–"
        v = list(self.ratio.values())
        rng = f" ({min(v):.2f}–{max(v):.2f})" if len(v) > 1 else ""
        return f"{med(v):.2f}×{rng}"


def header(add, swift, torch):
    add("# Benchmarks: Swift vs PyTorch (CPU, float32), against the machine's FP32 peak")
    add("")
    add("<!-- generated by bench/report.py; edit below the notes marker only -->")
    add("")
    add("| round | side | date | CPU | threads | FMA peak of the round, 1 core | FMA peak of the round, all threads | "
        "this side's peak measurements, all threads | library |")
    add("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in sorted(set(swift.docs) | set(torch.docs)):
        for name, side in (("Swift", swift), ("PyTorch", torch)):
            for d in side.docs.get(r, [])[:1]:
                p = side.peak.get(r)
                lib = d.get("blas", "") if name == "Swift" else f"torch {d.get('version', '–')}"
                own = sorted(x["allCoresGFLOPS"] for x in side.measured.get(r, []) if x.get("allCoresGFLOPS"))
                own_cell = (f"{own[0]:.1f}–{own[-1]:.1f} ({len(own)})" if len(own) > 1
                            else f"{own[0]:.1f}" if own else "–")
                add(f"| {r} | {name} | {d.get('date', '–')} | {d.get('machine', '–')} | {d.get('threads', '–')} | "
                    + (f"{p['perCoreGFLOPS']:.1f} GFLOP/s ({p['width']}-wide) | {p['allCoresGFLOPS']:.1f} GFLOP/s"
                       if p else "– | –") + f" | {own_cell} | {lib} |")
    add("")
    add("Method: the same shapes (`bench/configs.json`) in both frameworks, run by `bench/run.sh` in alternating "
        "rounds (Swift, then PyTorch, in each round) on a machine shared with other jobs; per op 3 warm-up calls, "
        "then at least 10 calls and 0.5 s (4 s for the MILAN-step and teacher rows: the host has slow spells of "
        "about 2 s, and a row timed inside one would report the spell); each MILAN-step configuration runs in its own "
        "process on both sides. "
        "Per round and side: the best call, its GFLOP/s on the row's work (FLOP formulas below) and its % of the "
        "round's FMA peak (an inline-assembly loop of independent FMAs, every thread at once, measured by every Swift "
        "process before and after its rows and right before the PyTorch processes; the round's peak is the highest "
        "of these, as a measurement taken while the shared host held a core reads low). The "
        "tables give the **median over the rounds** of each side's per-round best and % of peak, and the speed-up "
        "(PyTorch best / Swift best in the same round; above 1 means Swift is faster) as the median and the range "
        "over the rounds. GEMM rows also compare the library's split GEMM with raw OpenBLAS on its own threads, "
        "timed call by call in alternation in the same process.")
    add("")


def family_tables(add, swift, torch, order):
    by_family = {}
    for key in order:
        if key[0].endswith(RAW_SUFFIX):
            continue
        by_family.setdefault(family_of(key[0]), []).append(key)
    for title in [t for t, _ in FAMILIES] + ["Other"]:
        keys = by_family.get(title)
        if not keys:
            continue
        confs = []
        for _, c in keys:
            if c not in confs:
                confs.append(c)
        first_seen = list(keys)
        keys.sort(key=lambda k: (confs.index(k[1]), first_seen.index(k)))
        has_raw = any((op + RAW_SUFFIX, c) in swift.rows for op, c in keys)
        add(f"## {title}")
        add("")
        head = ["config", "op", "GFLOP", "Swift best ms", "Swift % of peak", "PyTorch best ms", "PyTorch % of peak",
                "speed-up (range)"]
        if has_raw:
            head.append("Swift vs raw OpenBLAS")
        add("| " + " | ".join(head) + " |")
        add("| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 2)) + " |")
        for key in keys:
            row = Row(key, swift, torch)
            cells = [f"`{key[1]}`", key[0], fmt_gf(row.flops), fmt_ms(med(row.s_best.values())),
                     fmt_pct(med(row.s_pct.values())), fmt_ms(med(row.t_best.values())),
                     fmt_pct(med(row.t_pct.values())), row.ratio_cell()]
            if has_raw:
                raw = swift.rounds((key[0] + RAW_SUFFIX, key[1]))
                rs = [raw[r]["best_ms"] / row.s_best[r] for r in raw if r in row.s_best]
                cells.append(f"{med(rs):.2f}×" if rs else "–")
            add("| " + " | ".join(cells) + " |")
        add("")


def step_tables(add, swift, torch, order):
    """Per MILAN-step configuration: each phase's median time, work and % of peak on both sides."""
    keys = [k for k in order if k[0] == "milan_step"]
    if not keys:
        return {}
    add("## Where each side spends a MILAN step")
    add("")
    add("Median over the rounds of each phase's median time within the timed calls (Swift: the library's phases; "
        "PyTorch: explicit timers around the reference model's `forward_encoder`, `forward_decoder`, `forward_loss`, "
        "`backward`, `AdamW.step`). The encoder phase includes the masking. *Training* is everything but the teacher; "
        "its work is the encoder, decoder and backward FLOPs.")
    add("")
    summary = {}
    for key in keys:
        row = Row(key, swift, torch)
        pf = next((x.get("phase_flops") for x in row.s.values() if x.get("phase_flops")), {}) or {}
        add(f"### `{key[1]}`")
        add("")
        add("| phase | GFLOP | Swift ms | Swift % of peak | PyTorch ms | PyTorch % of peak |")
        add("| --- | ---: | ---: | ---: | ---: | ---: |")
        stats = {}
        for side_name, rows in (("s", row.s), ("t", row.t)):
            per_phase = {}
            for r, x in rows.items():
                ph = x.get("phases_ms") or {}
                for p in PHASES:
                    if p in ph:
                        per_phase.setdefault(p, {})[r] = ph[p]
                if ph:
                    per_phase.setdefault("training", {})[r] = sum(ph.get(p, 0) for p in PHASES if p != "teacher")
            stats[side_name] = per_phase
        train_flops = sum(pf.get(p, 0) for p in ("encoder", "decoder", "backward")) or None
        for p in PHASES + ["training"]:
            f = train_flops if p == "training" else pf.get(p)
            cells = [f"**{p}**" if p == "training" else p, fmt_gf(f)]
            for side_name, rows in (("s", row.s), ("t", row.t)):
                times = stats[side_name].get(p, {})
                pcts = [pct(f, ms, rows[r]["_peak"]) for r, ms in times.items()] if f else []
                cells += [fmt_ms(med(times.values())), fmt_pct(med(pcts))]
            add("| " + " | ".join(cells) + " |")
            if p == "training":
                summary[key[1]] = {
                    "training_pct": {r: pct(f, ms, row.s[r]["_peak"]) for r, ms in stats["s"].get(p, {}).items()}}
        s_rss = med(x.get("max_rss_mb") for x in row.s.values())
        t_rss = med(x.get("max_rss_mb") for x in row.t.values())
        s_pool = med(x.get("peak_mb") for x in row.s.values())
        counted = med(x.get("counted_flops") for x in row.s.values())
        add("")
        add(f"Work by the formulas {fmt_gf(row.flops)} GFLOP; matrix products the Swift library issued in one step "
            f"(BLAS counter) {fmt_gf(counted)} GFLOP. Maximum RSS of the process: Swift "
            f"{fmt_gf(s_rss and s_rss * 1e9 / 1024)} GB, PyTorch {fmt_gf(t_rss and t_rss * 1e9 / 1024)} GB; Swift's "
            f"peak tensor memory in the step {fmt_gf(s_pool and s_pool * 1e6)} GB.")
        add("")
        summary[key[1]].update(s_rss=s_rss, t_rss=t_rss)
    return summary


def targets(add, swift, torch, order, steps):
    """Issue 13's bars, checked on the medians over the rounds (and every round for 'never slower')."""
    add("## Targets (issue 13), checked on these rounds")
    add("")
    add("| target | measured | met |")
    add("| --- | --- | --- |")

    def find(op, prefix):
        return next((k for k in order if k[0] == op and k[1].startswith(prefix)), None)

    def line(name, value, ok):
        add(f"| {name} | {value} | {'yes' if ok else '**no**'} |")

    def pct_target(name, key, bar):
        if key:
            row = Row(key, swift, torch)
            v = med(row.s_pct.values())
            line(name, f"{fmt_pct(v)} of peak (rounds: "
                 + ", ".join(fmt_pct(row.s_pct[r]) for r in sorted(row.s_pct)) + ")", v is not None and v >= bar)

    def ratio_target(name, key, bar):
        if key:
            row = Row(key, swift, torch)
            v = med(row.ratio.values())
            line(name, f"{row.ratio_cell()}", v is not None and v >= bar)

    paper = find("milan_step", "paper_vitb16 ")
    pct_target("paper-config step ≥ 75 % of peak", paper, 75)
    ratio_target("paper-config step ≥ 1.3× PyTorch", paper, 1.3)
    pct_target("CLIP ViT-B/16 teacher ≥ 85 % of peak", find("teacher_fwd", "clip_vit_b16 "), 85)
    pct_target("DINOv2-S/14 teacher ≥ 85 % of peak", find("teacher_fwd", "dinov2_s14 "), 85)
    if paper and paper[1] in steps:
        tp = steps[paper[1]]["training_pct"]
        v = med(tp.values())
        line("paper-config training part ≥ 70 % of peak",
             f"{fmt_pct(v)} (rounds: " + ", ".join(fmt_pct(tp[r]) for r in sorted(tp)) + ")", v is not None and v >= 70)
    ratio_target("CPU-default step, cached targets ≥ 1.5× PyTorch", find("milan_step", "cpu_default_cached "), 1.5)
    ratio_target("CPU-default step, teacher inside ≥ 1.25× PyTorch", find("milan_step", "cpu_default "), 1.25)
    slower = []
    for k in order:
        if k[0] in ("milan_step", "teacher_fwd"):
            row = Row(k, swift, torch)
            slower += [f"`{k[1]}` round {r} ({v:.2f}×)" for r, v in sorted(row.ratio.items()) if v < 1]
    line("no step or teacher row slower than PyTorch in any round", ", ".join(slower) or "none slower",
         not slower)
    mem = [(c, s["s_rss"], s["t_rss"]) for c, s in steps.items() if s.get("s_rss") and s.get("t_rss")]
    line("peak memory ≤ PyTorch's (max RSS, median over rounds)",
         "; ".join(f"`{c}` {a / 1024:.2f} vs {b / 1024:.2f} GB" for c, a, b in mem) or "–",
         bool(mem) and all(a <= b for _, a, b in mem))
    add("")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swift", action="append", required=True, help="JSON from the Swift bench (repeatable)")
    ap.add_argument("--torch", action="append", required=True, help="JSON from bench/bench_torch.py (repeatable)")
    ap.add_argument("--torch-peak", action="append", default=[], help="peak JSON measured before a PyTorch round")
    ap.add_argument("--out", default="docs/benchmarks.md")
    args = ap.parse_args()

    swift = Side(args.swift)
    torch = Side(args.torch, args.torch_peak)
    round_peaks = {}
    for side in (swift, torch):
        for r, ps in side.measured.items():
            for p in ps:
                if p.get("allCoresGFLOPS") and (r not in round_peaks
                                                or p["allCoresGFLOPS"] > round_peaks[r]["allCoresGFLOPS"]):
                    round_peaks[r] = p
    swift.use_round_peaks(round_peaks)
    torch.use_round_peaks(round_peaks)
    order = list(swift.order) + [k for k in torch.order if k not in swift.rows]

    lines = []
    add = lines.append
    header(add, swift, torch)
    kernels = next((d.get("sdpa_kernels") for ds in torch.docs.values() for d in ds if d.get("sdpa_kernels")), None)
    if kernels:
        add(f"PyTorch attention kernels: {', '.join('`%s`' % k for k in kernels)}.")
        add("")
    family_tables(add, swift, torch, order)
    steps = step_tables(add, swift, torch, order)
    targets(add, swift, torch, order, steps)

    notes = NOTES_MARKER + "\n"  # the marker line and everything after it are kept from the old file
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = f.read().splitlines(keepends=True)
        for i, line in enumerate(old):
            if line.strip() == NOTES_MARKER:
                notes = "".join(old[i:])
                break
    text = "\n".join(lines).rstrip() + "\n\n" + notes
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
