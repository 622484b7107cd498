"""Progress lines while running, and latest.json / latest.md / latest.png at the end."""
from __future__ import annotations

import json
import math
import os

from alternatives import ALTERNATIVES, OPT_IN

# Every column a report can have, in order: fused, then the opt-in variants of our kernel, then
# the others.
COLUMNS = ALTERNATIVES[:1] + OPT_IN + ALTERNATIVES[1:]

SHORT = {"fused": "fused", "fused_skip": "f.skip", "decomposed": "decomp", "ort_attention": "ort_attn", "ort_mha": "ort_mha",
         "onnx_attention": "onnx_attn", "openvino": "openvino", "torch_compile": "t.compile",
         "torch": "torch"}


def cell(r: dict | None, key: str = "median_ms", fmt: str = "{:.2f}") -> str:
    """A number when the alternative ran and matched PyTorch, else why not (n/a, FAIL, error)."""
    if not r:
        return "–"
    if r["status"] != "ok":
        return r["status"]
    v = r.get(key)
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def speedup_text(res: dict) -> str:
    s = res.get("speedup")
    return f"{s:.2f}× vs {res['best_alt']}" if s else "–"


# --- progress table ---------------------------------------------------------------------------
_W = 44


def progress_header(alts) -> str:
    cols = "".join(f"{SHORT[a]:>10}" for a in alts)
    line = f"{'point':<{_W}}{cols}  {'speed-up':<26}{'fused GF/s':>11}{'%peak':>7}"
    return line + "\n" + "-" * len(line)


def progress_row(res: dict, alts) -> str:
    cols = "".join(f"{cell(res['alts'].get(a)):>10}" for a in alts)
    f = res["alts"].get("fused", {})
    return (f"{res['point']['label']:<{_W}}{cols}  {speedup_text(res):<26}"
            f"{cell(f, 'gflops', '{:.1f}'):>11}{cell(f, 'pct_peak', '{:.1f}'):>7}")


# --- files ------------------------------------------------------------------------------------
def write_json(path: str, meta: dict, results: list) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


def markdown(meta: dict, results: list) -> str:
    alts = [a for a in COLUMNS if a in meta["alternatives"]]
    peak = meta["sgemm_peak_gflops"]
    out = [f"Run {meta['date']} · CPU {meta.get('cpu', '?')}, fused kernel ISA {meta.get('kernel_isa', '?')} · "
           f"commit {meta['commit']} (kernel library built {meta.get('library_mtime')}) · {meta['threads']} threads · grid "
           f"`{meta['grid']}` · onnxruntime {meta['onnxruntime']} · torch {meta['torch']} · "
           f"ORT spinning {'on' if meta.get('spin') else 'off'} · {meta.get('budget_s')} s of timed runs per point · "
           f"fp32 sgemm peak {peak:.0f} GFLOP/s (torch.mm 2048², best over the run: 5 before, 3 before each point, 5 after; same threads)"
           + (f" · **fused and torch limited to {meta['isa']}** (`--isa`; ORT's ops and OpenVINO, if listed, use the CPU's best: both run MLAS)"
              if meta.get("isa") else ""), ""]
    out += ["**Median latency (ms)**, interleaved (every round in a new shuffled order) on the same inputs; speed-up = best "
            "alternative's ms / fused ms (> 1: fused is faster).", ""]
    out.append("| point | " + " | ".join(alts) + " | speed-up |")
    out.append("|---|" + "---:|" * len(alts) + "---|")
    for r in results:
        out.append(f"| {r['point']['label']} | " + " | ".join(cell(r["alts"].get(a)) for a in alts)
                   + f" | {speedup_text(r)} |")
    out += ["", "**Summary per alternative**: geometric mean over the points where both ran of "
            "alternative ms / fused ms (> 1: fused faster), and where fused is faster.", ""]
    out.append("| alternative | geo-mean alt/fused | fused faster at | fused slower at |")
    out.append("|---|---:|---:|---|")
    for a in alts:
        if a == "fused":
            continue
        pairs = [(r["point"]["label"], r["alts"][a]["median_ms"] / r["alts"]["fused"]["median_ms"])
                 for r in results if r["alts"].get(a, {}).get("status") == "ok"
                 and r["alts"].get("fused", {}).get("status") == "ok"]
        if not pairs:
            out.append(f"| {a} | – | – | – |")
            continue
        gm = math.exp(sum(math.log(v) for _, v in pairs) / len(pairs))
        slower = [lbl for lbl, v in pairs if v < 1]
        slow_txt = "all" if len(slower) == len(pairs) else ("none" if not slower else "; ".join(slower))
        out.append(f"| {a} | {gm:.2f}× | {len(pairs) - len(slower)}/{len(pairs)} | {slow_txt} |")
    out += ["", "**Dense-equivalent GFLOP/s (% of sgemm peak)**: projections + attention counted as "
            "if nothing were padded or masked.", ""]
    out.append("| point | GFLOP | " + " | ".join(alts) + " |")
    out.append("|---|---:|" + "---:|" * len(alts))
    for r in results:
        cells = []
        for a in alts:
            x = r["alts"].get(a)
            cells.append(cell(x, "gflops", "{:.0f}") + (f" ({x['pct_peak']:.0f}%)" if x and x["status"] == "ok" else ""))
        out.append(f"| {r['point']['label']} | {r['flops'] / 1e9:.2f} | " + " | ".join(cells) + " |")
    if any("peak_mb" in x for r in results for x in r["alts"].values()):
        out += ["", "**Peak memory (MB)** above a baseline, per alternative in a fresh process "
                "(session or module creation + 3 runs; see README).", ""]
        out.append("| point | " + " | ".join(alts) + " |")
        out.append("|---|" + "---:|" * len(alts))
        for r in results:
            out.append(f"| {r['point']['label']} | " + " | ".join(
                cell(r["alts"].get(a), "peak_mb", "{:.1f}") for a in alts) + " |")
    notes = sorted({f"{a}: {x['status']} — {x['note']}" for r in results for a, x in r["alts"].items()
                    if x["status"] != "ok" and x.get("note")})
    if notes:
        out += ["", "Not timed:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def plot(path: str, meta: dict, results: list) -> None:
    if len(results) > 40:
        plot_many(path, meta, results)
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    colors = {a: f"C{i}" for i, a in enumerate(COLUMNS)}
    others = [a for a in COLUMNS if a != "fused" and a in meta["alternatives"]]
    labels = [r["point"]["label"] for r in results]
    x = np.arange(len(results))
    w = 0.8 / max(len(others), 1)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(10, 0.9 * len(results) + 4), 10), sharex=True)
    for i, a in enumerate(others):
        sp = []
        for r in results:
            f, o = r["alts"].get("fused"), r["alts"].get(a)
            ok = f and o and f["status"] == o["status"] == "ok"
            sp.append(o["median_ms"] / f["median_ms"] if ok else np.nan)
        ax1.bar(x + (i - (len(others) - 1) / 2) * w, sp, w, label=a, color=colors[a])
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    ax1.set_ylabel("alternative ms / fused ms  (>1: fused faster)")
    ax1.set_title(f"MaskedMHA fused kernel vs alternatives — {meta['threads']} threads, {meta['date']}")
    ax1.legend(fontsize=8, ncol=3)
    for i, a in enumerate(["fused"] + others):
        pct = [r["alts"][a]["pct_peak"] if r["alts"].get(a, {}).get("status") == "ok" else np.nan
               for r in results]
        ax2.bar(x + (i - len(others) / 2) * (0.8 / (len(others) + 1)), pct, 0.8 / (len(others) + 1), label=a,
                color=colors[a])
    ax2.set_ylabel(f"dense-equivalent GFLOP/s, % of sgemm peak ({meta['sgemm_peak_gflops']:.0f})")
    ax2.legend(fontsize=8, ncol=3)
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_many(path: str, meta: dict, results: list) -> None:
    """Large grids: one dot per point, speed-up of fused over the fastest alternative, points
    grouped by (B, L) along x, colour = padding, marker = attn_mask, filled = self-attention."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    for r in results:
        key = (r["point"]["B"], r["point"]["L"])
        if key not in groups:
            groups.append(key)
    pad_color = {0.0: "C0", 0.25: "C1", 0.5: "C3"}
    mask_marker = {"none": "o", "causal": "^", "random": "s"}
    fig, ax = plt.subplots(figsize=(12, 6))
    within = {}
    for r in results:
        p, f = r["point"], r["alts"].get("fused", {})
        others = [x["median_ms"] for a, x in r["alts"].items() if a != "fused" and x.get("status") == "ok"]
        if f.get("status") != "ok" or not others:
            continue
        g = groups.index((p["B"], p["L"]))
        k = within.get(g, 0)
        within[g] = k + 1
        xpos = g + 0.1 + 0.8 * (k % 45) / 45
        ax.scatter(xpos, min(others) / f["median_ms"], s=22, marker=mask_marker.get(p["mask"], "o"),
                   color=pad_color.get(p["pad"], "k"), facecolors=pad_color.get(p["pad"], "k") if not p["cross"] else "none")
    for y, style in ((1.0, "-"), (1.1, ":"), (1.3, "--")):
        ax.axhline(y, color="k", lw=0.8, ls=style)
    ax.set_xticks([g + 0.5 for g in range(len(groups))])
    ax.set_xticklabels([f"{b}x{l}" for b, l in groups])
    ax.set_xlim(0, len(groups))
    ax.set_xlabel("B x L (within a group: E/H, self then cross, padding, mask)")
    ax.set_ylabel("fastest alternative ms / fused ms  (>1: fused faster)")
    date = meta["date"].split(" / ")
    ax.set_title(f"MaskedMHA fused kernel vs the fastest alternative, {len(results)} points — "
                 f"{meta['threads']} threads, {date[0]}" + (f" (+{len(date) - 1} more runs)" if len(date) > 1 else ""))
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"pad {int(v * 100)}%") for v, c in pad_color.items()]
    handles += [Line2D([], [], ls="", marker=m, color="grey", label=f"mask {k}") for k, m in mask_marker.items()]
    handles += [Line2D([], [], ls="", marker="o", color="grey", markerfacecolor="none", label="cross-attention"),
                Line2D([], [], color="k", ls=":", label="1.1x"), Line2D([], [], color="k", ls="--", label="1.3x")]
    ax.legend(handles=handles, fontsize=8, ncol=5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(out_dir: str, meta: dict, results: list) -> None:
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "latest.json"), meta, results)
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write(markdown(meta, results))
    if results:
        plot(os.path.join(out_dir, "latest.png"), meta, results)
