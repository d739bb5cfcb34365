"""The self-contained HTML report of `attnsum analyze` (analysis.py): importance grids, pattern
grids, the suggested plan with its reasons, the plan editor, head profiles and attention maps;
with the pipeline's results (ROUGE with intervals, training curves, the plan's student against
its dense twin) when `attnsum pipeline` wrote it. CSS and scripts (report_assets/) are inlined:
no network.

The plan editor starts from the suggested plan. Clicking a head of its grid (or Enter or Space
on it; Tab and the arrow keys move between heads) selects it and shows its importance and its
score on every pattern it offers; the choice list assigns it a pattern and mode, or makes it
learned. The plan text (HeadPlan's text form), the train command (the analyzed run's dataset,
steps and length, an output folder named after the plan), the predicted cost (work fractions
of plan_costs.plan_costs, per layer and for the model) and the measured speed of the same plan
(plan_costs.measured_speeds) follow every change; "download plan.json" saves the plan in the
form `attnsum train --plan` reads. It reads from 800 px wide up (the grid scrolls inside its
box). The attention maps (report_assets/heatmaps.js) draw a chosen head's attention with
sentence boundaries on both axes, a colour scale, zoom, a pattern's allowed cells outlined and
a readout of the cell under the pointer, beside the head's average map by offset and sentence.
Hooks for tests: grid cells carry data-layer and data-head, the plan text is #plan-text, the
choice list #choice, the download button #download-plan, the reset button #reset-plan, the copy
button #copy-command, the maps' controls #map-head, #map-overlay, #map-zoom and #map-colour.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def _grid(values: np.ndarray, fmt: str, cls: str, scale: float | None = None) -> str:
    L, H = values.shape
    top = scale or float(values.max()) or 1.0
    head = "".join(f"<th>h{h}</th>" for h in range(H))
    rows = []
    for layer in range(L):
        cells = "".join(
            f'<td class="{cls}" style="--a:{min(1.0, values[layer, h] / top):.3f}" '
            f'title="layer {layer}, head {h}: {values[layer, h]:{fmt}}">{values[layer, h]:{fmt}}</td>'
            for h in range(H))
        rows.append(f"<tr><th>L{layer}</th>{cells}</tr>")
    return (f'<div class="scroll"><table class="grid"><tr><th></th>{head}</tr>{"".join(rows)}'
            '</table></div>')


def _json_script(element_id: str, data) -> str:
    text = json.dumps(data).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


ASSETS = Path(__file__).parent / "report_assets"  # the report's CSS and scripts, inlined


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _editor(result: dict) -> str:
    L, H = result["layers"], result["heads"]
    imp = np.asarray(result["importance"]["taylor"])
    top = float(imp.max()) or 1.0
    head = "".join(f"<th>h{h}</th>" for h in range(H))
    rows = "".join(
        f"<tr><th>L{layer}</th>" + "".join(
            f'<td class="cell" data-layer="{layer}" data-head="{h}" '
            f'style="--a:{imp[layer, h] / top:.3f}"></td>' for h in range(H)) + "</tr>"
        for layer in range(L))
    return f"""<p class="note">Starts from the suggested plan. Click a head (or Tab to the grid, move
with the arrow keys, press Enter), then choose its pattern and mode (or learned); the red bar under
each head is its importance, its tooltip the numbers. The cost table gives the work
fraction of the plan (tiles the fused kernel visits over a dense layer's, on validation documents
laid end to end) and the speedup bound over dense attention it implies.</p>
<div id="editor"><div class="scroll"><table class="grid" role="grid"
aria-label="plan: layers by heads"><tr><th></th>{head}</tr>{rows}</table></div>
<p><button id="reset-plan">reset to the suggested plan</button>
<button id="download-plan">download plan.json</button></p>
<div class="row"><div id="panel"><label>assign the selected head: <select id="choice"></select>
</label><div id="panel-body"></div></div>
<div><h3>predicted cost (work fraction)</h3><table class="grid" id="plan-cost"></table></div>
</div><div id="plan-measured" class="note"></div>
</div>
<h3>plan text</h3><pre id="plan-text"></pre>
<p><label>train with it (after the download): <input id="train-command" readonly></label>
<button id="copy-command">copy</button><span id="copy-status" role="status"
aria-live="polite"></span></p>"""


def _profiles(result: dict) -> str:
    prof = {k: np.asarray(v) for k, v in result["profiles"].items()}
    imp = np.asarray(result["importance"]["taylor"])
    L, H = imp.shape
    offsets = prof["offsets"]
    n_off = offsets.shape[-1] // 2
    sets = [k for k in prof if k not in ("offsets", "offsets_same", "far", "entropy")]
    heads = sorted(((imp[layer, h], layer, h) for layer in range(L) for h in range(H)),
                   reverse=True)
    cols = ["layer", "head", "importance", "entropy", *sets, f"far (|j-i| > {n_off})",
            f"offsets j - i ({-n_off}..{n_off})"]
    body = []
    for value, layer, h in heads:
        hist = offsets[layer, h]
        peak = max(float(hist.max()), 1e-9)
        bars = "".join(f'<i class="{"zero" if d == n_off else ""}" style="height:'
                       f'{max(1, round(24 * v / peak))}px" title="j - i = {d - n_off}: {v:.3f}"></i>'
                       for d, v in enumerate(hist))
        nums = [value, prof["entropy"][layer, h], *(prof[k][layer, h] for k in sets),
                prof["far"][layer, h]]
        tds = "".join(f'<td data-v="{v:.6g}">{v:.3f}</td>' for v in nums)
        mode = int(np.argmax(hist)) - n_off
        body.append(f'<tr><td data-v="{layer}">{layer}</td><td data-v="{h}">{h}</td>{tds}'
                    f'<td data-v="{mode}"><span class="hist"><span class="bars">{bars}</span>'
                    f'<span class="ticks"><b>{-n_off}</b><b>0</b><b>+{n_off}</b></span></span>'
                    '</td></tr>')
    header = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    return f"""<p class="note">Where each head's attention mass goes, averaged over valid
query tokens: on keys of the same token (self included), of the same sentence, on [CLS], [SEP]
and punctuation, beyond {n_off} positions; the entropy of its rows (nats; low: focused); and
the histogram of relative offsets j - i (red bar: the token itself). Click a column to sort. A
head with one tall bar away from zero is a positional head (offset:K); a concentrated mass on a
key set the built-ins do not name is a candidate for a user pattern (--patterns).</p>
<div class="scroll"><table class="sort" id="profiles-table"><tr>{header}</tr>{"".join(body)}</table>
</div>"""


MODES_EXPLAINED = """<p class="note" id="plan-modes"><b>mask</b>: the head keeps its learned query-key
softmax but only over the pattern's allowed keys (hard sparse attention). <b>synth</b>
(synthesize): the head computes no query or key; its attention is uniform over the allowed keys
(one key for next and previous token). Value and output projections stay learned either way.
A head left <b>learned</b> is the ordinary softmax head.</p>"""


def _plan_explained(result: dict) -> str:
    """The rule behind the suggested plan in words (analysis.explain_suggestion), and the heads
    it chose and left."""
    ex = result["suggestion"]
    names = ", ".join(f"{html.escape(k)} (as {html.escape(v)})" for k, v in ex["suggested"].items())
    rule = (f"<p id='plan-rule'>A head is given a pattern when it already follows it: at least "
            f"{ex['threshold']:.2f} of its attention mass (mean over the analysed documents' "
            f"queries) on the pattern's keys, and at least {ex['min_lift']:g} times what a "
            f"uniform head would put there (the lift). Among several, the highest lift wins. "
            f"Patterns suggested: {names}. Importance does not choose heads: a head that follows "
            f"no pattern stays learned however important it is. Here {len(ex['chosen'])} of "
            f"{ex['heads']} heads qualify.</p>")

    def rows(items, cells):
        return "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells(it))
                       + "</tr>" for it in items)
    chosen = rows(ex["chosen"], lambda c: (f"L{c['layer']} h{c['head']}",
                                           f"{c['pattern']}/{c['mode']}", f"{c['score']:.3f}",
                                           f"{c['lift']:.1f}x", c["rank"]))
    left = rows(ex["important_left"], lambda c: (f"L{c['layer']} h{c['head']}", c["rank"],
                                                 c["best"], f"{c['score']:.3f}",
                                                 f"{c['lift']:.1f}x"))
    return (rule + MODES_EXPLAINED + "<div class='row'><div><h3>heads given a pattern</h3>"
            "<table class='grid' id='plan-chosen'><tr><th>head</th><th>pattern</th><th>score</th>"
            f"<th>lift</th><th>importance rank</th></tr>{chosen}</table></div>"
            "<div><h3>the most important heads, left learned</h3><table class='grid' "
            "id='plan-left'><tr><th>head</th><th>importance rank</th><th>closest pattern</th>"
            f"<th>score</th><th>lift</th></tr>{left}</table></div></div>")


def _heatmaps(result: dict, maps: list[dict]) -> str:
    docs = []
    for d, doc in enumerate(maps):
        tokens = "".join(f"<span>{html.escape(t)}</span>" for t in doc["tokens"])
        docs.append(
            f'<div class="doc" id="doc{d}"><h3>document {html.escape(str(doc["id"]))} '
            f'<span class="note">(its first {len(doc["tokens"])} tokens)</span></h3>'
            f'<div class="row"><div class="mapbox"><canvas></canvas></div><div>'
            '<p class="legend"><span>0</span><i></i><span class="legend-max"></span></p>'
            '<p class="readout note" role="status">move over the map, or over a token, to read '
            'a cell</p>'
            f'<div class="tokens">{tokens}</div></div></div></div>')
    options = "".join(f'<option value="{z}">{z}</option>' for z in (2, 3, 4, 6, 8, 12))
    return f"""<p class="note">Queries run down, keys across; the lines and the labels S1, S2, ...
mark where each sentence starts (its [CLS]). Colour: the share of a query's attention, scaled to
the row's largest weight (or to the map's, as chosen). The heads offered are the most important
and those the suggestion patterns. An outline shows the cells a pattern allows, by the same
predicate the kernels run.</p>
<p><label>head <select id="map-head"></select></label>
<label>outline the cells of <select id="map-overlay"><option value="">no pattern</option></select>
</label> <label>zoom (px a token) <select id="map-zoom">{options}</select></label>
<label>colour <select id="map-colour"><option value="row">per row</option>
<option value="map">per map</option></select></label></p>
<p id="overlay-info" class="note"></p>
<h3>average over the analysed documents</h3><p id="avg-caption" class="note"></p>
<div class="scroll"><table class="grid avg" id="avg-map"></table></div>
{"".join(docs)}"""


PALETTE = ("#246", "#c33", "#3a3", "#a6a", "#e80", "#399")


def _svg_plot(series: dict[str, list], label: str, width: int = 420, height: int = 170) -> str:
    """A small line plot of several series of (step, value) points, its axes' ranges written
    out and a legend; each point's value in its tooltip."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    L, T, W, H = 48, 18, width - 150, height - 42

    def xy(x, y):
        return (L + W * (x - x0) / ((x1 - x0) or 1), T + H - H * (y - y0) / ((y1 - y0) or 1))

    body = []
    for k, (name, pts) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}"
                        for i, (px, py) in enumerate(xy(*p) for p in pts))
        body.append(f'<path d="{path}" stroke="{colour}" class="line"/>' + "".join(
            f'<circle cx="{xy(*p)[0]:.1f}" cy="{xy(*p)[1]:.1f}" r="2.5" fill="{colour}"><title>'
            f'{html.escape(name)}, step {p[0]}: {p[1]:.4g}</title></circle>' for p in pts)
            + f'<text x="{L + W + 10}" y="{T + 10 + 14 * k}" fill="{colour}">{html.escape(name)}'
            "</text>")
    return (f'<svg class="curve" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(label)}"><text x="{L}" y="11">{html.escape(label)}</text>'
            f'<path d="M{L},{T}V{T + H}H{L + W}" class="axis"/>{"".join(body)}'
            f'<text x="{L - 4}" y="{T + 8}" class="y">{y1:.4g}</text>'
            f'<text x="{L - 4}" y="{T + H}" class="y">{y0:.4g}</text>'
            f'<text x="{L}" y="{height - 8}">step {x0}</text>'
            f'<text x="{L + W}" y="{height - 8}" class="y">step {x1}</text></svg>')


def _results(results: dict) -> str:
    """The pipeline's results (pipeline.py `report_results`): ROUGE with intervals, training
    curves, the plan's student against its dense twin."""
    metrics = ("rouge1", "rouge2", "rougeLsum")
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>" + "".join(
            f"<td>{sc[m]['mean']:.2f} [{sc[m]['low']:.2f}, {sc[m]['high']:.2f}]</td>"
            for m in metrics) + f"<td>{results['speed'].get(name, '')}</td></tr>"
        for name, sc in results["rouge"].items())
    curves = results["curves"]
    metric = next(iter(curves.values()))["val_metric"] if curves else ""
    plots = (_svg_plot({n: c["loss"] for n, c in curves.items()}, "training loss (per log step)")
             + _svg_plot({n: c["val"] for n, c in curves.items()},
                         f"validation {metric} (the checkpoints' scores)"))
    twin = results.get("twin")
    twin_text = "" if not twin else (
        f"<p id='twin'>The student with the plan against its dense twin (the same student, every "
        f"head learned, the same steps): ROUGE-1 {twin['rouge1']:+.2f}, "
        f"{twin['speed']:.2f}x its documents per second.</p>")
    return f"""<p class="note">On the {results['documents']} test documents
({html.escape(results['dataset'])}): ROUGE F1 with 95% bootstrap intervals; documents per second of
sentence scoring ({html.escape(results['timing'])}).</p>
<table class="grid" id="rouge-table"><tr><th>system</th><th>ROUGE-1</th><th>ROUGE-2</th>
<th>ROUGE-Lsum</th><th>docs/s</th></tr>{rows}</table>{twin_text}
<h3>training curves</h3><div class="row curves">{plots}</div>"""


def render_html(title: str, result: dict, maps: list[dict], results: dict | None = None) -> str:
    """The report of one analysis: `result` is analysis.json's content (analysis.py), `maps`
    maps.json's; `results` the pipeline's, when it ran (`_results`)."""
    taylor = np.asarray(result["importance"]["taylor"])
    gate = np.asarray(result["importance"]["gate"])
    score = np.asarray(result["pattern_scores"])
    pattern_grids = "".join(
        f"<h3>{html.escape(p)} <span class='note'>(chance level {result['chance'][i]:.3f})</span>"
        f"</h3>" + _grid(score[:, :, i], ".2f", "pat-score", 1.0)
        for i, p in enumerate(result["patterns"]))
    measured = result["measured"] + (results or {}).get("measured", [])
    editor_data = {k: result[k] for k in ("layers", "heads", "importance", "patterns",
                                          "pattern_scores", "chance", "plan", "costs", "preset",
                                          "inject", "pattern_files", "trained", "profiles",
                                          "documents")}
    results_html = ("" if results is None else
                    f'<h2 id="results">Results of the pipeline</h2>{_results(results)}')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_asset("report.css")}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{result['documents']} validation documents; {taylor.shape[0]} layers x
{taylor.shape[1]} heads. Suggested plan: <code>{html.escape(result['plan_text'])}</code></p>
{results_html}
<h2 id="importance">Head importance</h2>
<p class="note">How much the summarizer's loss (binary cross-entropy of its sentence scores
against the oracle labels, over the analysed documents) depends on each head, each grid summing
to 1; darker is more important. First-order Taylor: per head, the sum over its query, key and
value rows and its output-projection columns of (gradient x weight)^2, the loss's change when
the head's weights go to zero, to first order. Gate sensitivity: |dL/dg| for a gate g = 1
multiplying the head's output. Heads high on both matter most; heads near 0 on both can be given
a pattern at little risk.</p>
<div class="row"><div><h3>first-order Taylor</h3>{_grid(taylor, ".3f", "imp")}</div>
<div><h3>gate sensitivity</h3>{_grid(gate, ".3f", "imp")}</div></div>
<h2 id="patterns">Pattern scores</h2>
<p class="note">Mean attention mass each head puts on each pattern's keys (1.0: the head follows
the pattern exactly); compare with the chance level of a uniform head.</p>
{pattern_grids}
<h2 id="plan">Plan editor</h2>
{_plan_explained(result)}
{_editor(result)}
<h2 id="profiles">Head profiles</h2>
{_profiles(result)}
<h2 id="heatmaps">Attention maps</h2>
{_heatmaps(result, maps)}
{_json_script("analysis", {**editor_data, "measured": measured})}
{_json_script("maps", maps)}
<script>{_asset("editor.js")}</script>
<script>{_asset("heatmaps.js")}</script>
</body></html>
"""
