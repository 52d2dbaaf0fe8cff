"""`charlm.interpret`'s tables written out: claims.json and claims.md, units.json,
ngram.json, saturation.png and index.html, one self-contained page to explore the units.

  interpret_report.check_out('inspect-out')   # before any work: can the folder be written?
  interpret_report.write(tables, 'inspect-out', source='val split of ...')

Everything is written into a fresh folder beside `out` and renamed into place at the end,
so an interrupted or failed run leaves nothing half-written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from charlm.errors import CharLMError

OUTPUTS = ('claims.json', 'claims.md', 'units.json', 'ngram.json', 'saturation.png',
           'index.html')
GATE_COLOURS = {'forget': '#1f77b4', 'input': '#2ca02c', 'output': '#d62728',
                'reset': '#9467bd', 'update': '#ff7f0e'}


def check_out(out: str) -> pathlib.Path:
    """The output folder, checked before any work: its parent exists and is writable, and
    it is new, empty, or an earlier output of inspect (whose files it replaces)."""
    p = pathlib.Path(out).expanduser().absolute()
    where = f'cannot write --out={out}'
    if not str(out).strip():
        raise CharLMError('--out is empty: name a folder to write into')
    if p.exists() and not p.is_dir():
        raise CharLMError(f'{where}: it is a file (name a folder)')
    if not p.parent.is_dir():
        raise CharLMError(f'{where}: ' + (f'{p.parent} is not a directory' if p.parent.exists()
                                          else f'no directory {p.parent}'))
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise CharLMError(f'{where}: {p.parent} is not writable')
    if p.is_dir():
        other = sorted(f.name for f in p.iterdir() if f.name not in OUTPUTS)
        if other:
            raise CharLMError(f'{where}: it holds other files ({", ".join(other[:3])}); name a '
                              'new folder, or an earlier output of inspect to replace')
    return p


def plain(x):
    """JSON-ready: numpy arrays and scalars as lists and numbers, NaN as None."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return plain(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def claims_markdown(tables: dict, source: str = '') -> str:
    """The claims, the class means and the saturation summary as markdown tables."""
    c = tables['claims']
    lines = [f'# What the gates do: {tables["cell"]} {"x".join(map(str, tables["hidden_sizes"]))}'
             f', {tables["chars"]:,} characters{" of " + source if source else ""}', '',
             '| claim | layer | difference (A - B) | 95% interval | units with it (> 0.05) '
             '| verdict |', '|---|---|---|---|---|---|']
    for v in c['claims']:
        if not v['applicable']:
            lines.append(f'| {v["claim"]} | - | - | - | - | no {v["gate"]} gate in a '
                         f'{tables["cell"]} |')
        for r in v['layers']:
            verdict = r['verdict']
            lines.append(f'| {v["claim"]} | {r["layer"]} | {r["difference"]:+.4f} | '
                         f'[{r["low"]:+.4f}, {r["high"]:+.4f}] | {r["units_over_0.05"]:.0%} '
                         f'| {verdict} |')
    lines += ['', 'A is the claim\'s class, B every other position (or, for the speaker '
              'newline, the other newlines); each mean is over all units and positions. '
              'The interval is a block bootstrap (blocks of 250 characters, 1,000 resamples).',
              '', '## Mean gate activation by character class', '',
              '| layer | gate | ' + ' | '.join(c['classes']) + ' |',
              '|---|---|' + '---|' * len(c['classes'])]
    for i, layer in enumerate(c['layers']):
        for g, t in layer.items():
            cells = [f'{m:.3f} [{lo:.3f}, {hi:.3f}]' if n else '-' for m, lo, hi, n in zip(
                t['mean'], t['low'], t['high'], t['count'], strict=True)]
            lines.append(f'| {i} | {g} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## Saturation (fraction of units mostly saturated)', '',
              '| layer | gate | mean left (< 0.1) | mean right (> 0.9) | units left > 0.5 | '
              'units right > 0.5 |', '|---|---|---|---|---|---|']
    for i, layer in enumerate(tables['saturation']):
        for g, s in layer.items():
            lines.append(f'| {i} | {g} | {s["left"].mean():.3f} | {s["right"].mean():.3f} | '
                         f'{np.mean(s["left"] > 0.5):.0%} | {np.mean(s["right"] > 0.5):.0%} |')
    return '\n'.join(lines) + '\n'


def saturation_png(tables: dict) -> bytes:
    """The paper's scatter: per layer, each unit's fraction of steps left-saturated against
    right-saturated, one colour per gate."""
    from matplotlib.figure import Figure

    layers = tables['saturation']
    fig = Figure(figsize=(3.6 * len(layers) + 0.6, 3.8), dpi=100, layout='constrained')
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for i, (ax, layer) in enumerate(zip(axes, layers, strict=True)):
        for g, s in layer.items():
            ax.scatter(s['left'], s['right'], s=8, alpha=0.6, label=g,
                       color=GATE_COLOURS.get(g))
        ax.plot([0, 1], [1, 0], color='0.8', lw=0.8)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f'layer {i}',
               xlabel='fraction left-saturated (< 0.1)')
        if i == 0:
            ax.set_ylabel('fraction right-saturated (> 0.9)')
        ax.legend(fontsize=8, loc='upper right')
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    return buf.getvalue()


def page_data(tables: dict) -> dict:
    """What index.html's script reads: the text, the units' activations (int8, base64, with
    a scale each), both models' top-5 next characters, the unit list by feature."""
    p = tables['page']
    acts = np.asarray(p['acts'], np.float64)
    scale = np.maximum(np.abs(acts).max(1), 1e-9) if len(acts) else np.zeros(0)
    q = np.round(acts / scale[:, None] * 127).astype(np.int8) if len(acts) else acts
    ng = tables['ngram']
    features = {}
    for row in tables['units']:
        if 'units' not in row:
            continue
        for u, r in zip(row['units'][:3], row['r'][:3], strict=True):
            key = next(i for i, x in enumerate(p['units']) if (x['layer'], x['state'], x['unit'])
                       == (row['layer'], row['state'], int(u)))
            features.setdefault(row['feature'], []).append(
                {'key': key, 'label': f'L{row["layer"]} {row["state"]} {int(u)}',
                 'r': round(float(r), 3)})
    return {'text': p['text'], 'symbols': p['symbols'],
            'acts': [base64.b64encode(row.tobytes()).decode() for row in q],
            'scale': [round(float(s), 4) for s in scale], 'features': features,
            'model_top': [p['model_top_ids'].tolist(),
                          np.round(p['model_top_p'], 3).tolist()],
            'ngram_top': [ng['page_top_ids'].tolist(), np.round(ng['page_top_p'], 3).tolist()],
            'ngram_order': ng['best_order'],
            'summary': f'{tables["cell"]} {"x".join(map(str, tables["hidden_sizes"]))}: '
                       f'{ng["model_bits_per_char"]:.3f} bits/char over {tables["chars"]:,} '
                       f'characters; best n-gram ({ng["best_order"]}-gram) '
                       f'{min(ng["bits_per_char"]):.3f}'}


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>charlm inspect</title>
<style>
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
#wrap { display: flex; gap: 1.5em; align-items: flex-start; }
#units { width: 17em; flex: none; font-size: 13px; max-height: 80vh; overflow-y: auto; }
#units h3 { margin: 0.8em 0 0.2em; font-size: 14px; }
button.unit { display: block; width: 100%; text-align: left; margin: 1px 0; border: 1px solid #ccc;
  background: #f7f7f7; cursor: pointer; font: 12px monospace; padding: 2px 4px; }
button.unit.on { background: #333; color: #fff; }
#text { font: 13px/1.5 monospace; white-space: pre-wrap; flex: 1; max-height: 80vh;
  overflow-y: auto; border: 1px solid #ddd; padding: 0.5em; }
#text span:hover { outline: 1px solid #000; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888;
  padding: 4px 8px; font: 12px monospace; pointer-events: none; box-shadow: 2px 2px 4px #aaa; }
#tip table { border-collapse: collapse; } #tip td { padding: 0 6px; }
#now { font: 13px monospace; margin: 0.3em 0; }
#claims { border-collapse: collapse; font-size: 13px; margin: 0.4em 0 1em; }
#claims td, #claims th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
</style></head><body>
<h2>Inside the model: units, their text features, next-character guesses</h2>
<p id="summary"></p>
<p>Click a unit to colour the text by its activation (red positive, blue negative, after
reading each character). Hover a character for both models' five likeliest next characters.</p>
<details open><summary>The tutorials' claims about the gates, tested (claims.md)</summary>
__CLAIMS__</details>
<div id="now"></div>
<div id="wrap"><div id="units"></div><div id="text"></div></div>
<h3>Gate saturation</h3>
<p>Each dot a unit: the fraction of steps its gate is below 0.1 against above 0.9
(Karpathy, Johnson and Fei-Fei 2015, figure 3).</p>
<img id="saturation" alt="gate saturation" src="data:image/png;base64,__PNG__">
<div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
'use strict';
const D = JSON.parse(document.getElementById('data').textContent);
const SHOW = {'\n': '\u23ce\n', ' ': ' ', '\t': '\u21e5'};
const show = (c) => SHOW[c] !== undefined ? SHOW[c] : c;
const name = (c) => c === '\n' ? '\u23ce' : c === ' ' ? '\u2423' : c;
document.getElementById('summary').textContent = D.summary;
const text = document.getElementById('text');
const spans = [];
for (let i = 0; i < D.text.length; i++) {
  const s = document.createElement('span');
  s.textContent = show(D.text[i]);
  s.dataset.i = i;
  spans.push(s);
  text.appendChild(s);
}
function decode(b64) {
  const raw = atob(b64), out = new Int8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = (raw.charCodeAt(i) << 24) >> 24;
  return out;
}
function colour(key) {
  const a = decode(D.acts[key]);
  for (let i = 0; i < spans.length; i++) {
    const v = a[i] / 127;
    const w = Math.round(255 * (1 - Math.abs(v)));
    spans[i].style.backgroundColor = v >= 0 ? `rgb(255,${w},${w})` : `rgb(${w},${w},255)`;
  }
}
const units = document.getElementById('units');
let first = null;
for (const [feature, list] of Object.entries(D.features)) {
  const h = document.createElement('h3');
  h.textContent = feature;
  units.appendChild(h);
  for (const u of list) {
    const b = document.createElement('button');
    b.className = 'unit';
    b.textContent = `${u.label}  r=${u.r.toFixed(2)}`;
    b.dataset.key = u.key;
    b.addEventListener('click', () => {
      document.querySelectorAll('button.unit.on').forEach((x) => x.classList.remove('on'));
      b.classList.add('on');
      colour(u.key);
      document.getElementById('now').textContent =
        `${feature}: ${u.label} (r = ${u.r.toFixed(3)}; max |activation| ${D.scale[u.key]})`;
    });
    units.appendChild(b);
    if (first === null) first = b;
  }
}
if (first) first.click();
const tip = document.getElementById('tip');
function rows(top, i) {
  return top[0][i].map((id, j) => [name(D.symbols[id]), top[1][i][j]]);
}
text.addEventListener('mouseover', (e) => {
  const i = e.target.dataset && e.target.dataset.i;
  if (i === undefined) return;
  const m = rows(D.model_top, +i), g = rows(D.ngram_top, +i);
  let html = `<table><tr><th>model</th><th></th><th>${D.ngram_order}-gram</th><th></th></tr>`;
  for (let j = 0; j < 5; j++) {
    html += `<tr><td>${esc(m[j][0])}</td><td>${m[j][1].toFixed(3)}</td>` +
            `<td>${esc(g[j][0])}</td><td>${g[j][1].toFixed(3)}</td></tr>`;
  }
  tip.innerHTML = `after \u201c${esc(name(D.text[+i]))}\u201d` + html + '</table>';
  tip.style.display = 'block';
  tip.style.left = (e.clientX + 12) + 'px';
  tip.style.top = (e.clientY + 12) + 'px';
});
text.addEventListener('mouseout', () => { tip.style.display = 'none'; });
function esc(s) {
  return s.replace(/[&<>"]/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'})[c]);
}
</script></body></html>
"""


def claims_html(tables: dict) -> str:
    rows = ['<tr><th>claim</th><th>layer</th><th>difference</th><th>95% interval</th>'
            '<th>verdict</th></tr>']
    for v in tables['claims']['claims']:
        for r in v['layers']:
            rows.append(f'<tr><td>{html.escape(v["claim"])}</td><td>{r["layer"]}</td>'
                        f'<td>{r["difference"]:+.4f}</td><td>[{r["low"]:+.4f}, '
                        f'{r["high"]:+.4f}]</td><td>{r["verdict"]}</td></tr>')
    return '<table id="claims">' + ''.join(rows) + '</table>'


def page_html(tables: dict, png: bytes) -> str:
    data = json.dumps(plain(page_data(tables)), ensure_ascii=False).replace('</', '<\\/')
    return (PAGE.replace('__PNG__', base64.b64encode(png).decode())
            .replace('__CLAIMS__', claims_html(tables)).replace('__DATA__', data))


def json_tables(tables: dict) -> dict[str, dict]:
    """claims.json, units.json and ngram.json's contents."""
    ng = {k: v for k, v in tables['ngram'].items() if not k.startswith('page_')}
    head = {k: tables[k] for k in ('cell', 'hidden_sizes', 'chars', 'streams', 'logits_error')}
    return {'claims.json': head | tables['claims'] | {'saturation': tables['saturation']},
            'units.json': head | {'units': tables['units']},
            'ngram.json': head | ng}


def write(tables: dict, out: str, source: str = '') -> pathlib.Path:
    """Writes every output into a new folder beside `out`, then renames it into place (an
    earlier output of inspect there is replaced)."""
    final = check_out(out)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{final.name}.', dir=final.parent))
    old = None
    try:
        for name, content in json_tables(tables).items():
            (tmp / name).write_text(json.dumps(plain(content | {'source': source}), indent=1)
                                    + '\n', encoding='utf-8')
        (tmp / 'claims.md').write_text(claims_markdown(tables, source), encoding='utf-8')
        png = saturation_png(tables)
        (tmp / 'saturation.png').write_bytes(png)
        (tmp / 'index.html').write_text(page_html(tables, png), encoding='utf-8')
        os.chmod(tmp, 0o755)
        if final.exists():
            old = final.parent / f'{tmp.name}.old'
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not final.exists():
            old.rename(final)  # the earlier output back, as it was
        raise
    return final
