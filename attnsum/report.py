"""The self-contained HTML report of `attnsum analyze` (analysis.py): importance grids, pattern
grids, the suggested plan, and interactive attention heatmaps; inline CSS and script, no
network."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

import numpy as np

from .attention import HeadPlan

if TYPE_CHECKING:
    from .analysis import PatternScores


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
    return f'<table class="grid"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def _plan_grid(plan: HeadPlan) -> str:
    head = "".join(f"<th>h{h}</th>" for h in range(plan.num_heads))
    rows = "".join(
        "<tr><th>L{}</th>{}</tr>".format(layer, "".join(
            f'<td class="{"pat" if s else "learned"}">{html.escape(str(s)) if s else "learned"}</td>'
            for s in plan.layer(layer))) for layer in range(plan.num_layers))
    return f'<table class="grid plan"><tr><th></th>{head}</tr>{rows}</table>'


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table.grid{border-collapse:collapse;margin:8px 0}
table.grid td,table.grid th{border:1px solid #ccc;padding:3px 6px;text-align:center;font-size:12px}
td.imp{background:rgba(200,60,40,var(--a))}td.pat-score{background:rgba(40,90,200,var(--a))}
td.pat{background:#dfe9ff}td.learned{color:#999}
.doc{margin:10px 0 24px}.tokens span{padding:1px 2px;margin:1px;display:inline-block;cursor:pointer;
border-radius:3px}.tokens span.q{outline:2px solid #c33}
.heads button{margin:2px}.heads button.on{background:#245;color:#fff}
canvas{border:1px solid #ccc;image-rendering:pixelated;width:320px;height:320px}
.row{display:flex;gap:24px;align-items:flex-start}.note{color:#666}
"""

SCRIPT = """
const DOCS = JSON.parse(document.getElementById('maps').textContent);
function draw(canvas, attn){
  const n = attn.length, ctx = canvas.getContext('2d');
  canvas.width = n; canvas.height = n;
  const img = ctx.createImageData(n, n);
  for (let i = 0; i < n; i++){ let m = Math.max(...attn[i]) || 1;
    for (let j = 0; j < n; j++){ const v = attn[i][j] / m, k = 4 * (i * n + j);
      img.data[k] = 255 - 200 * v; img.data[k+1] = 255 - 170 * v; img.data[k+2] = 255 - 60 * v;
      img.data[k+3] = 255; } }
  ctx.putImageData(img, 0, 0);
}
DOCS.forEach((doc, d) => {
  const root = document.getElementById('doc' + d);
  const toks = root.querySelectorAll('.tokens span');
  const canvas = root.querySelector('canvas');
  const info = root.querySelector('.info');
  let cur = 0;
  function select(hi){ cur = hi;
    root.querySelectorAll('.heads button').forEach((b, i) => b.classList.toggle('on', i === hi));
    draw(canvas, doc.heads[hi].attn); }
  function show(qi){ const row = doc.heads[cur].attn[qi]; const m = Math.max(...row) || 1;
    toks.forEach((t, j) => { t.style.background = 'rgba(40,90,200,' + (row[j] / m).toFixed(3) + ')';
      t.classList.toggle('q', j === qi); });
    info.textContent = 'query "' + doc.tokens[qi] + '" (' + qi + '): strongest key "' +
      doc.tokens[row.indexOf(Math.max(...row))] + '"'; }
  root.querySelectorAll('.heads button').forEach((b, i) => b.addEventListener('click', () => select(i)));
  toks.forEach((t, i) => { t.addEventListener('mouseenter', () => show(i));
    t.addEventListener('click', () => show(i)); });
  select(0);
});
"""


def render_html(title: str, taylor: np.ndarray, gate: np.ndarray, ps: PatternScores,
                plan: HeadPlan, maps: list[dict], n_docs: int) -> str:
    pattern_grids = "".join(
        f"<h3>{html.escape(p)} <span class='note'>(chance level {ps.chance[i]:.3f})</span></h3>"
        + _grid(ps.score[:, :, i], ".2f", "pat-score", 1.0) for i, p in enumerate(ps.patterns))
    docs = []
    for d, doc in enumerate(maps):
        buttons = "".join(f"<button>L{h['layer']} h{h['head']}</button>" for h in doc["heads"])
        tokens = "".join(f"<span>{html.escape(t)}</span>" for t in doc["tokens"])
        docs.append(f'<div class="doc" id="doc{d}"><h3>document {html.escape(str(doc["id"]))}</h3>'
                    f'<div class="heads">{buttons}</div><div class="row"><canvas></canvas>'
                    f'<div><p class="info note">hover or click a token to see where the head '
                    f'sends its attention</p><div class="tokens">{tokens}</div></div></div></div>')
    data = json.dumps(maps).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{n_docs} validation documents; {taylor.shape[0]} layers x {taylor.shape[1]} heads.</p>
<h2 id="importance">Head importance</h2>
<div class="row"><div><h3>first-order Taylor</h3>{_grid(taylor, ".3f", "imp")}</div>
<div><h3>gate sensitivity</h3>{_grid(gate, ".3f", "imp")}</div></div>
<h2 id="patterns">Pattern scores</h2>
<p class="note">Mean attention mass each head puts on each pattern's keys (1.0: the head follows
the pattern exactly); compare with the chance level of a uniform head.</p>
{pattern_grids}
<h2 id="plan">Suggested plan</h2>
<p><code>{html.escape(str(plan))}</code></p>
{_plan_grid(plan)}
<h2 id="heatmaps">Attention of the most important heads</h2>
{"".join(docs)}
<script type="application/json" id="maps">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""
