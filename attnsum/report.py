"""The self-contained HTML report of `attnsum analyze` (analysis.py): importance grids, pattern
grids, the plan editor, head profiles and interactive attention heatmaps; inline CSS and script,
no network.

The plan editor starts from the suggested plan. Clicking a head of its grid (or Enter or Space
on it; Tab and the arrow keys move between heads) selects it and shows its importance and its
score on every pattern it offers; the choice list assigns it a pattern and mode, or makes it
learned. The plan text (HeadPlan's text form), the train command (the analyzed run's dataset,
steps and length, an output folder named after the plan) and the predicted cost (work fractions
of analysis.plan_costs, per layer and for the model) follow every change; "download plan.json"
saves the plan in the form `attnsum train --plan` reads. It reads from 800 px wide up (the grid
scrolls inside its box). Hooks for tests: grid cells carry data-layer and data-head, the plan
text is #plan-text, the choice list #choice, the download button #download-plan, the reset
button #reset-plan, the copy button #copy-command.
"""

from __future__ import annotations

import html
import json

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


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table.grid{border-collapse:collapse;margin:8px 0}
table.grid td,table.grid th{border:1px solid #ccc;padding:3px 6px;text-align:center;font-size:12px}
td.imp{background:rgba(200,60,40,var(--a))}td.pat-score{background:rgba(40,90,200,var(--a))}
.scroll{max-width:100%;overflow-x:auto}
#editor td.cell{cursor:pointer;min-width:52px;font-size:11px;
box-shadow:inset 0 -4px rgba(200,60,40,var(--a))}
#editor td.cell.pat{background:#dfe9ff}#editor td.cell.learned{color:#777}
#editor td.cell.sel{outline:3px solid #c33}#editor td.cell:focus{outline:3px solid #246}
#panel{flex:0 0 300px;width:300px}#panel table{width:100%}#panel table td{padding:1px 8px;font-size:12px}
#plan-cost{table-layout:fixed}#plan-cost td{min-width:56px}
#copy-status{color:#262;margin-left:8px}
pre#plan-text{white-space:pre-wrap;background:#f6f6f6;padding:6px}
input#train-command{width:100%;font-family:monospace}
table.sort th{cursor:pointer}table.sort td{font-size:12px;padding:1px 6px;text-align:right}
table.sort th[aria-sort=descending]::after{content:" \\25BC"}
table.sort th[aria-sort=ascending]::after{content:" \\25B2"}
.bars{display:inline-flex;align-items:flex-end;height:24px;gap:1px}
.bars i{display:inline-block;width:5px;background:#357}.bars i.zero{background:#c33}
.doc{margin:10px 0 24px}.tokens span{padding:1px 2px;margin:1px;display:inline-block;cursor:pointer;
border-radius:3px}.tokens span.q{outline:2px solid #c33}
.heads button{margin:2px}.heads button.on{background:#245;color:#fff}
canvas{border:1px solid #ccc;image-rendering:pixelated;width:320px;height:320px}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}.row>div{min-width:0;max-width:100%}
.note{color:#666}
"""

EDITOR_SCRIPT = """
const A = JSON.parse(document.getElementById('analysis').textContent);
const L = A.layers, H = A.heads, imp = A.importance.taylor;
const KINDS = Object.keys(A.costs.work);  // "learned" and every "pattern/mode"
const suggested = A.plan.heads.map(r => r.map(s => s ? s.pattern + '/' + s.mode : null));
let plan = suggested.map(r => r.slice()), sel = null;
const cells = document.querySelectorAll('#editor td.cell');
const choice = document.getElementById('choice');
KINDS.forEach(k => { const o = document.createElement('option'); o.value = k; o.textContent = k;
  choice.appendChild(o); });
const PAPER = ['match/mask', 'sent/mask', 'next/synth', 'prev/synth'];  // plan.py PAPER_GROUP
function planText(){  // HeadPlan.__str__ (attnsum/attention/plan.py)
  if (plan.every(r => r.every((s, h) => s === PAPER[h % 4]))) return 'paper';
  const bySpec = new Map();
  plan.forEach((row, l) => row.forEach((s, h) => { if (!s) return;
    if (!bySpec.has(s)) bySpec.set(s, new Map());
    const m = bySpec.get(s); if (!m.has(l)) m.set(l, []); m.get(l).push(h); }));
  const items = [];
  bySpec.forEach((layers, spec) => layers.forEach((heads, l) =>
    items.push(l + ':' + heads.join(',') + '=' + spec)));
  return items.join('; ') || 'none';
}
function planJSON(){
  return {num_layers: L, num_heads: H, heads: plan.map(r => r.map(s => {
    if (!s) return null; const i = s.lastIndexOf('/');
    return {pattern: s.slice(0, i), mode: s.slice(i + 1)}; }))};
}
function shortHash(text){  // a name for the run folder of a plan
  let h = 5381; for (const ch of text) h = ((h * 33) ^ ch.charCodeAt(0)) >>> 0;
  return h.toString(16).padStart(8, '0').slice(0, 6);
}
function trainCommand(text){
  const t = A.trained, parts = ['attnsum train --preset ' + A.preset];
  if (A.inject === 'side') parts.push('--inject side');
  parts.push('--plan plan.json');
  if (t.dataset) parts.push('--dataset ' + t.dataset);
  if (t.steps) parts.push('--steps ' + t.steps);
  if (t.batch_size) parts.push('--batch-size ' + t.batch_size);
  if (t.max_len) parts.push('--max-len ' + t.max_len);
  parts.push('--out runs/' + A.preset + '-plan-' + shortHash(text));
  A.pattern_files.forEach(f => parts.push('--patterns ' + f));
  return parts.join(' ');
}
function render(){
  cells.forEach(c => { const l = +c.dataset.layer, h = +c.dataset.head, s = plan[l][h];
    c.textContent = s || 'learned'; c.classList.toggle('pat', !!s); c.classList.toggle('learned', !s);
    const on = !!sel && l === sel[0] && h === sel[1];
    c.classList.toggle('sel', on); c.setAttribute('aria-selected', on ? 'true' : 'false');
    c.title = 'layer ' + l + ', head ' + h + ': ' + (s || 'learned') + '; importance ' +
      imp[l][h].toFixed(3) + ' (Enter or click to select)'; });
  const text = planText();
  document.getElementById('plan-text').textContent = text;
  const cost = document.getElementById('plan-cost'), n = A.costs.lengths.length;
  const layerWork = plan.map(r => A.costs.lengths.map((_, i) =>
    r.reduce((t, s) => t + A.costs.work[s || 'learned'][i], 0) / H));
  const model = A.costs.lengths.map((_, i) => layerWork.reduce((t, w) => t + w[i], 0) / L);
  let rows = '<tr><th></th>' + A.costs.lengths.map(x => '<th>N = ' + x + '</th>').join('') + '</tr>';
  layerWork.forEach((w, l) => { rows += '<tr><th>L' + l + '</th>' +
    w.map(x => '<td>' + x.toFixed(3) + '</td>').join('') + '</tr>'; });
  rows += '<tr><th>model</th>' + model.map(x => '<td>' + x.toFixed(3) + '</td>').join('') + '</tr>';
  rows += '<tr><th>bound</th>' + model.map(x => '<td>' + (1 / x).toFixed(2) + 'x</td>').join('') + '</tr>';
  cost.innerHTML = rows;
  document.getElementById('train-command').value = trainCommand(text);
  showPanel();
}
function showPanel(){
  const p = document.getElementById('panel-body');
  if (!sel){ p.innerHTML = '<p class="note">click a head of the grid (or Tab to it, then Enter)</p>';
    choice.disabled = true; return; }
  const [l, h] = sel; choice.disabled = false; choice.value = plan[l][h] || 'learned';
  let rows = '<tr><th colspan="3">layer ' + l + ', head ' + h + ': importance ' +
    imp[l][h].toFixed(3) + ' (gate ' + A.importance.gate[l][h].toFixed(3) + ')</th></tr>' +
    '<tr><th>pattern</th><th>score</th><th>lift</th></tr>';
  A.patterns.forEach((name, i) => { const s = A.pattern_scores[l][h][i];
    rows += '<tr><td>' + name + '</td><td>' + s.toFixed(3) + '</td><td>' +
      (s / Math.max(A.chance[i], 1e-9)).toFixed(1) + 'x</td></tr>'; });
  p.innerHTML = '<table>' + rows + '</table>';
}
function cellAt(l, h){ return document.querySelector('#editor td.cell[data-layer="' + l +
  '"][data-head="' + h + '"]'); }
// Keyboard: one head of the grid is in the Tab order (a roving tabindex); the arrow keys move
// between heads, Enter or Space selects one and moves to the choice list, where the arrow keys
// assign; Enter or Escape there returns to the head.
function focusCell(c){ cells.forEach(o => { o.tabIndex = -1; }); c.tabIndex = 0; c.focus(); }
cells.forEach((c, i) => { c.tabIndex = i === 0 ? 0 : -1; c.setAttribute('role', 'gridcell');
  c.addEventListener('click', () => { sel = [+c.dataset.layer, +c.dataset.head]; focusCell(c); render(); });
  c.addEventListener('keydown', e => {
    const l = +c.dataset.layer, h = +c.dataset.head;
    const move = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]}[e.key];
    if (e.key === 'Enter' || e.key === ' '){ e.preventDefault(); sel = [l, h]; render(); choice.focus(); }
    else if (move){ e.preventDefault();
      focusCell(cellAt(Math.min(L - 1, Math.max(0, l + move[0])),
                       Math.min(H - 1, Math.max(0, h + move[1])))); }
  }); });
choice.addEventListener('keydown', e => {
  if ((e.key === 'Enter' || e.key === 'Escape') && sel){
    e.preventDefault(); focusCell(cellAt(sel[0], sel[1])); } });
function assignChoice(){ if (!sel) return;
  plan[sel[0]][sel[1]] = choice.value === 'learned' ? null : choice.value; render(); }
choice.addEventListener('change', assignChoice);
choice.addEventListener('input', assignChoice);
document.getElementById('reset-plan').addEventListener('click', () => {
  plan = suggested.map(r => r.slice()); render(); });
document.getElementById('download-plan').addEventListener('click', () => {
  const blob = new Blob([JSON.stringify(planJSON()) + '\\n'], {type: 'application/json'});
  const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = 'plan.json';
  document.body.appendChild(a); a.click(); a.remove(); });
document.getElementById('copy-command').addEventListener('click', () => {
  const t = document.getElementById('train-command'), status = document.getElementById('copy-status');
  const done = ok => { status.textContent = ok ? 'copied' : 'select the command and copy it';
    setTimeout(() => { status.textContent = ''; }, 2000); };
  t.select();
  if (navigator.clipboard && window.isSecureContext)
    navigator.clipboard.writeText(t.value).then(() => done(true), () => done(document.execCommand('copy')));
  else done(document.execCommand('copy')); });
render();

// head profiles: a sortable table
const prof = document.getElementById('profiles-table');
prof.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const rows = Array.from(prof.querySelectorAll('tr')).slice(1);
  const desc = th.getAttribute('aria-sort') !== 'descending';
  prof.querySelectorAll('th').forEach(o => o.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
  rows.sort((a, b) => { const x = +a.cells[col].dataset.v, y = +b.cells[col].dataset.v;
    return desc ? y - x : x - y; });
  rows.forEach(r => prof.appendChild(r)); }));
"""

HEATMAP_SCRIPT = """
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
<div><h3>predicted cost (work fraction)</h3><table class="grid" id="plan-cost"></table></div></div>
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
    sets = [k for k in prof if k not in ("offsets", "far", "entropy")]
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
                    f'<td data-v="{mode}"><span class="bars">{bars}</span></td></tr>')
    header = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    return f"""<p class="note">Where each head's attention mass goes, averaged over valid
query tokens: on keys of the same token (self included), of the same sentence, on [CLS], [SEP]
and punctuation, beyond {n_off} positions; the entropy of its rows (nats; low: focused); and
the histogram of relative offsets j - i (red bar: the token itself). Click a column to sort. A
head with one tall bar away from zero is a positional head (offset:K); a concentrated mass on a
key set the built-ins do not name is a candidate for a user pattern (--patterns).</p>
<div class="scroll"><table class="sort" id="profiles-table"><tr>{header}</tr>{"".join(body)}</table>
</div>"""


def render_html(title: str, result: dict, maps: list[dict]) -> str:
    """The report of one analysis: `result` is analysis.json's content (analysis.py)."""
    taylor = np.asarray(result["importance"]["taylor"])
    gate = np.asarray(result["importance"]["gate"])
    score = np.asarray(result["pattern_scores"])
    pattern_grids = "".join(
        f"<h3>{html.escape(p)} <span class='note'>(chance level {result['chance'][i]:.3f})</span>"
        f"</h3>" + _grid(score[:, :, i], ".2f", "pat-score", 1.0)
        for i, p in enumerate(result["patterns"]))
    docs = []
    for d, doc in enumerate(maps):
        buttons = "".join(f"<button>L{h['layer']} h{h['head']}</button>" for h in doc["heads"])
        tokens = "".join(f"<span>{html.escape(t)}</span>" for t in doc["tokens"])
        docs.append(f'<div class="doc" id="doc{d}"><h3>document {html.escape(str(doc["id"]))}</h3>'
                    f'<div class="heads">{buttons}</div><div class="row"><canvas></canvas>'
                    f'<div><p class="info note">hover or click a token to see where the head '
                    f'sends its attention</p><div class="tokens">{tokens}</div></div></div></div>')
    editor_data = {k: result[k] for k in ("layers", "heads", "importance", "patterns",
                                          "pattern_scores", "chance", "plan", "costs", "preset",
                                          "inject", "pattern_files", "trained")}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{result['documents']} validation documents; {taylor.shape[0]} layers x
{taylor.shape[1]} heads. Suggested plan: <code>{html.escape(result['plan_text'])}</code></p>
<h2 id="importance">Head importance</h2>
<div class="row"><div><h3>first-order Taylor</h3>{_grid(taylor, ".3f", "imp")}</div>
<div><h3>gate sensitivity</h3>{_grid(gate, ".3f", "imp")}</div></div>
<h2 id="patterns">Pattern scores</h2>
<p class="note">Mean attention mass each head puts on each pattern's keys (1.0: the head follows
the pattern exactly); compare with the chance level of a uniform head.</p>
{pattern_grids}
<h2 id="plan">Plan editor</h2>
{_editor(result)}
<h2 id="profiles">Head profiles</h2>
{_profiles(result)}
<h2 id="heatmaps">Attention of the most important heads</h2>
{"".join(docs)}
{_json_script("analysis", editor_data)}
{_json_script("maps", maps)}
<script>{EDITOR_SCRIPT}</script>
<script>{HEATMAP_SCRIPT}</script>
</body></html>
"""
