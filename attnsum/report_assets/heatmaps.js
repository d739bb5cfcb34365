// The attention heatmaps of report.py: per sample document, the chosen head's attention over
// its first tokens (queries down, keys across), sentence boundaries on both axes, a colour scale,
// zoom, a pattern's allowed cells outlined (maps.json "allowed": the predicate the kernels run),
// and the head's average map over every analysed document by offset j - i and sentence.
// Reads `A` (the analysis, editor.js) and the "maps" JSON. Test hooks: each canvas carries
// data-sentences (the sentence lines drawn) and data-outlined (the outline's edges drawn).
const DOCS = JSON.parse(document.getElementById('maps').textContent);
const MARGIN = 34, OUTLINE = 'rgb(230,120,0)';
const headSel = document.getElementById('map-head'), overlaySel = document.getElementById('map-overlay');
const zoomSel = document.getElementById('map-zoom'), colourSel = document.getElementById('map-colour');
const overlayInfo = document.getElementById('overlay-info');
function colourOf(v){ return [255 - 200 * v, 255 - 170 * v, 255 - 60 * v]; }
function sentenceOf(doc, i){ let s = 0; doc.sentences.forEach((start, k) => { if (start <= i) s = k; });
  return s + 1; }
function headLabel(l, h){ const s = A.plan.heads[l][h];
  return 'L' + l + ' h' + h + ' (' + (s ? 'suggested ' + s.pattern + '/' + s.mode : 'learned') + ')'; }
if (DOCS.length){
  DOCS[0].heads.forEach((hd, i) => { const o = document.createElement('option'); o.value = i;
    o.textContent = headLabel(hd.layer, hd.head); headSel.appendChild(o); });
  Object.keys(DOCS[0].allowed).forEach(name => { const o = document.createElement('option');
    o.value = name; o.textContent = name; overlaySel.appendChild(o); });
  const n0 = DOCS[0].tokens.length;
  zoomSel.value = String([8, 6, 4, 3, 2].find(z => z * n0 <= 520) || 2);
}
function draw(d){
  const doc = DOCS[d], root = document.getElementById('doc' + d), canvas = root.querySelector('canvas');
  const attn = doc.heads[+headSel.value].attn, n = attn.length, z = +zoomSel.value, M = MARGIN;
  const perRow = colourSel.value === 'row';
  const top = perRow ? 0 : Math.max(1, ...attn.map(r => Math.max(...r)));
  const off = document.createElement('canvas'); off.width = n; off.height = n;
  const img = off.getContext('2d').createImageData(n, n);
  for (let i = 0; i < n; i++){ const m = perRow ? (Math.max(...attn[i]) || 1) : top;
    for (let j = 0; j < n; j++){ const c = colourOf(attn[i][j] / m), k = 4 * (i * n + j);
      img.data[k] = c[0]; img.data[k + 1] = c[1]; img.data[k + 2] = c[2]; img.data[k + 3] = 255; } }
  off.getContext('2d').putImageData(img, 0, 0);
  canvas.width = M + n * z + 2; canvas.height = M + n * z + 2;
  canvas.style.width = canvas.width + 'px'; canvas.style.height = canvas.height + 'px';
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false; ctx.drawImage(off, M, M, n * z, n * z);
  // axes: a tick and label at each sentence's first token ([CLS]), a line across the map
  ctx.font = '10px sans-serif'; ctx.fillStyle = '#333'; ctx.strokeStyle = 'rgba(0,0,0,0.35)';
  ctx.fillText('key j \u2192', M, 10); ctx.save(); ctx.translate(10, M + 44); ctx.rotate(-Math.PI / 2);
  ctx.fillText('query i \u2192', 0, 0); ctx.restore();
  ctx.beginPath();
  let labelled = -Infinity;  // a label where it has room: 14 px after the last one
  doc.sentences.forEach((s, k) => { const p = M + s * z + 0.5;
    ctx.moveTo(p, M - 6); ctx.lineTo(p, M + n * z); ctx.moveTo(M - 6, p); ctx.lineTo(M + n * z, p);
    if (p - labelled >= 14){ labelled = p;
      ctx.fillText('S' + (k + 1), p + 2, M - 8); ctx.fillText('S' + (k + 1), 14, p + 10); } });
  ctx.stroke();
  canvas.dataset.sentences = doc.sentences.length;
  // the overlay: the border of the pattern's allowed cells
  let edges = 0;
  if (overlaySel.value){
    const ok = doc.allowed[overlaySel.value], at = (i, j) => i >= 0 && j >= 0 && i < n && j < n && ok[i][j] === '1';
    ctx.beginPath(); ctx.strokeStyle = OUTLINE; ctx.lineWidth = 1;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++){ if (!at(i, j)) continue;
      const x = M + j * z + 0.5, y = M + i * z + 0.5;
      if (!at(i - 1, j)){ ctx.moveTo(x, y); ctx.lineTo(x + z, y); edges++; }
      if (!at(i + 1, j)){ ctx.moveTo(x, y + z); ctx.lineTo(x + z, y + z); edges++; }
      if (!at(i, j - 1)){ ctx.moveTo(x, y); ctx.lineTo(x, y + z); edges++; }
      if (!at(i, j + 1)){ ctx.moveTo(x + z, y); ctx.lineTo(x + z, y + z); edges++; } }
    ctx.stroke(); }
  canvas.dataset.outlined = edges;
  root.querySelector('.legend-max').textContent = perRow ? "the row's largest weight" :
    'p = ' + (top / 1000).toFixed(3);
}
function mapCell(d, e){
  const canvas = document.getElementById('doc' + d).querySelector('canvas'), r = canvas.getBoundingClientRect();
  const z = +zoomSel.value, n = DOCS[d].tokens.length;
  const i = Math.floor((e.clientY - r.top - MARGIN) / z), j = Math.floor((e.clientX - r.left - MARGIN) / z);
  return i >= 0 && j >= 0 && i < n && j < n ? [i, j] : null;
}
function readout(d, i, j){
  const doc = DOCS[d], hd = doc.heads[+headSel.value], t = doc.tokens;
  let text = 'query ' + i + ' "' + t[i] + '" (S' + sentenceOf(doc, i) + ') \u2192 key ' + j + ' "' +
    t[j] + '" (S' + sentenceOf(doc, j) + '): ' + (hd.attn[i][j] / 1000).toFixed(3) +
    " of the query's attention";
  if (overlaySel.value) text += '; ' + overlaySel.value + (doc.allowed[overlaySel.value][i][j] === '1' ?
    ' allows this cell' : ' does not allow this cell');
  document.getElementById('doc' + d).querySelector('.readout').textContent = text;
}
function showTokens(d, qi){
  const root = document.getElementById('doc' + d), row = DOCS[d].heads[+headSel.value].attn[qi];
  const m = Math.max(...row) || 1;
  root.querySelectorAll('.tokens span').forEach((s, j) => {
    s.style.background = 'rgba(40,90,200,' + (row[j] / m).toFixed(3) + ')'; s.classList.toggle('q', j === qi); });
}
function averageMap(){  // analysis.head_profiles: "offsets" and "offsets_same"
  const hd = DOCS.length ? DOCS[0].heads[+headSel.value] : null, table = document.getElementById('avg-map');
  if (!hd) return;
  const all = A.profiles.offsets[hd.layer][hd.head], same = A.profiles.offsets_same[hd.layer][hd.head];
  const W = (all.length - 1) / 2, other = all.map((v, k) => Math.max(0, v - same[k]));
  const top = Math.max(...all, 1e-9);
  let rows = '<tr><th></th>' + all.map((_, k) => '<th>' + ((k - W) % 4 === 0 ? k - W : '') + '</th>').join('') + '</tr>';
  [['same sentence', same], ['other sentence', other]].forEach(([name, v]) => {
    rows += '<tr><th>' + name + '</th>' + v.map((x, k) => { const c = colourOf(x / top);
      return '<td style="background:rgb(' + c.join(',') + ')" title="j - i = ' + (k - W) + ', ' + name +
        ': ' + x.toFixed(3) + '"></td>'; }).join('') + '</tr>'; });
  table.innerHTML = rows;
  document.getElementById('avg-caption').textContent = 'L' + hd.layer + ' h' + hd.head +
    ': mass by offset j - i (columns, ' + -W + ' to ' + W + ') on keys of the same or another sentence, ' +
    'over the ' + A.documents + ' analysed documents; ' + A.profiles.far[hd.layer][hd.head].toFixed(3) +
    ' falls further away';
}
function describeOverlay(){
  if (!overlaySel.value || !DOCS.length){ overlayInfo.textContent = ''; return; }
  const hd = DOCS[0].heads[+headSel.value], i = A.patterns.indexOf(overlaySel.value);
  const s = A.pattern_scores[hd.layer][hd.head][i], c = A.chance[i];
  overlayInfo.textContent = overlaySel.value + ' on L' + hd.layer + ' h' + hd.head + ': score ' +
    s.toFixed(3) + " (the head's mean mass on the outlined cells over all analysed documents), chance " +
    c.toFixed(3) + ', lift ' + (s / Math.max(c, 1e-9)).toFixed(1) + 'x';
}
function redraw(){ DOCS.forEach((_, d) => draw(d)); averageMap(); describeOverlay(); }
[headSel, overlaySel, zoomSel, colourSel].forEach(s => s.addEventListener('change', redraw));
DOCS.forEach((doc, d) => {
  const root = document.getElementById('doc' + d), canvas = root.querySelector('canvas');
  canvas.addEventListener('mousemove', e => { const c = mapCell(d, e); if (c){ readout(d, c[0], c[1]);
    showTokens(d, c[0]); } });
  root.querySelectorAll('.tokens span').forEach((t, i) => {
    const show = () => { showTokens(d, i); const row = doc.heads[+headSel.value].attn[i];
      readout(d, i, row.indexOf(Math.max(...row))); };
    t.addEventListener('mouseenter', show); t.addEventListener('click', show); });
});
redraw();
