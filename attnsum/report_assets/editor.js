// The plan editor and the sortable head profiles of report.py (its docstring lists the hooks).
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
  showMeasured(text);
  document.getElementById('train-command').value = trainCommand(text);
  showPanel();
}
function showMeasured(text){  // plan_costs.measured_speeds, and the pipeline's own timing
  const el = document.getElementById('plan-measured'), rows = A.measured.filter(r => r.plan === text);
  if (!rows.length){ el.textContent = 'No measured speed of this plan (bench/bench_students.py ' +
    'measures plans into bench/results/; a pipeline run adds its own timing).'; return; }
  const x = v => v == null ? '' : v.toFixed(2) + 'x';
  el.innerHTML = '<table class="grid"><tr><th>measured by</th><th>model</th><th>N</th><th>batch</th>' +
    '<th>precision</th><th>vs teacher</th><th>vs dense twin</th></tr>' + rows.map(r => '<tr><td>' +
    r.source + ' (' + r.device + (r.commit ? ', ' + r.commit : '') + ')</td><td>' + r.model + '</td><td>' +
    r.N + '</td><td>' + r.batch + '</td><td>' + r.precision + '</td><td>' + x(r.vs_teacher) + '</td><td>' +
    x(r.vs_twin) + '</td></tr>').join('') + '</table>';
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
  const blob = new Blob([JSON.stringify(planJSON()) + '\n'], {type: 'application/json'});
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
