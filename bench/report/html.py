"""Static HTML pages: reports/<suite>/index.html (sortable leaderboard, published numbers in their own box,
figures, sample grids, provenance) and reports/index.html linking the suites. No network, no timestamps; the
inline script sorts tables (click a header, or `#sort=<table id>:<column index>:<asc|desc>` in the URL) and
records in the DOM what it rendered (`<body data-render="...">`), which the Chromium test reads back."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

from bench.report.tables import Table

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em 2em;color:#222;max-width:1500px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12px;margin:.4em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;white-space:nowrap}
th{background:#f2f2f2;cursor:pointer;user-select:none} th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.measured{border-left:6px solid #1f77b4;padding:.3em .8em;background:#f7fbff}
.published{border-left:6px solid #b45f06;padding:.3em .8em;background:#fff8f0}
.published th{background:#fbe5cf}
.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:3px;color:#fff;vertical-align:middle}
.badge.m{background:#1f77b4} .badge.p{background:#b45f06}
.figs{display:flex;flex-wrap:wrap;gap:1.2em} figure{margin:0;max-width:560px} figure img{width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#444}
.grids{display:flex;flex-wrap:wrap;gap:1em} .grids figure{max-width:220px} .grids img{image-rendering:pixelated}
.caption{font-size:12px;color:#555}
"""

JS = """
(function(){
function val(td){var v=td.getAttribute('data-v');if(v===null||v==='')return null;var f=parseFloat(v);return isNaN(f)?v:f;}
function sortTable(t,i,dir){var b=t.tBodies[0];var rows=Array.prototype.slice.call(b.rows);
 rows.sort(function(a,c){var x=val(a.cells[i]),y=val(c.cells[i]);
  if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  var r=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));return dir==='asc'?r:-r;});
 rows.forEach(function(r){b.appendChild(r);});
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(h,j){h.className=j===i?dir:'';});}
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(h,i){h.addEventListener('click',function(){
  sortTable(t,i,h.className==='asc'?'desc':'asc');});});});
var m=/#sort=([^:]+):(\\d+):(asc|desc)/.exec(location.hash);
if(m){var t=document.getElementById(m[1]);if(t)sortTable(t,parseInt(m[2],10),m[3]);}
function rect(e){var r=e.getBoundingClientRect();return [Math.round(r.left+scrollX),Math.round(r.top+scrollY),
 Math.round(r.width),Math.round(r.height)].join(',');}
window.addEventListener('load',function(){
 var imgs=Array.prototype.slice.call(document.images);
 var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;});
 var lb=document.getElementById('leaderboard');
 var parts=['js=1','images='+imgs.length,'loaded='+ok.length,
  'rows='+(lb?lb.tBodies[0].rows.length:0),'leaderboard='+(lb?rect(lb):''),
  'first='+(lb&&lb.tBodies[0].rows.length?lb.tBodies[0].rows[0].cells[0].textContent:'')];
 ok.forEach(function(i){parts.push('img:'+i.getAttribute('src')+'='+rect(i)+'/'+i.naturalWidth);});
 document.body.setAttribute('data-render',parts.join(';'));});
})();
"""


@dataclass
class Figure:
    png: str  # file name relative to the page
    caption: str
    pdf: str = ""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def table_html(t: Table, table_id: str, cls: str = "") -> str:
    if t.empty:
        return "<p class='caption'>(no rows)</p>"
    cols = list(t.text.columns)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for i in range(len(t.text)):
        cells = []
        for c in cols:
            text = t.text.iloc[i][c]
            sv = t.sort.iloc[i][c] if t.sort is not None and c in t.sort.columns else text
            numeric = isinstance(sv, (int, float, np.floating, np.integer)) and not isinstance(sv, bool)
            if numeric and not math.isfinite(float(sv)):
                sv, numeric = "", False
            v = repr(float(sv)) if numeric else ("" if sv is None else str(sv))
            cells.append(f'<td{" class=n" if numeric else ""} data-v="{_e(v)}">{_e(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class='scroll'><table id='{_e(table_id)}' class='sortable {cls}'><thead><tr>{head}</tr></thead>"
            f"<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")  # fmt: skip


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n<script>{JS}</script>\n</body></html>\n")  # fmt: skip


def suite_page(
    suite: str,
    leaderboard: Table,
    lb_caption: str,
    published: Table,
    pub_caption: str,
    figures: list[Figure],
    grids: list[Figure],
    grid_caption: str,
    extra_tables: list[tuple[str, str, Table]],
    provenance: Table,
) -> str:
    parts = [f"<h1>Suite <code>{_e(suite)}</code></h1>",
             "<p class='sub'>Generated by <code>invoke report</code> from the results store alone. "
             "<a href='../index.html'>All suites</a> · <a href='summary.md'>summary.md</a> · "
             "<a href='summary.tex'>summary.tex</a> · <a href='metrics_long.csv'>metrics_long.csv</a></p>"]  # fmt: skip
    parts.append("<h2>Leaderboard</h2>")
    parts.append(f"<div class='measured'><p><span class='badge m'>measured here</span> {_e(lb_caption)} "
                 "Click a column header to sort.</p>" + table_html(leaderboard, "leaderboard", "measured") + "</div>")  # fmt: skip
    parts.append(f"<div class='published' style='margin-top:1em'><p><span class='badge p'>published, NOT measured here"
                 f"</span> {_e(pub_caption)}</p>" + table_html(published, "published", "published") + "</div>")  # fmt: skip
    if figures:
        parts.append("<h2>Figures</h2><div class='figs'>")
        for f in figures:
            pdf = f" (<a href='{_e(f.pdf)}'>PDF</a>)" if f.pdf else ""
            parts.append(f"<figure><img src='{_e(f.png)}' alt='{_e(f.caption)}'>"
                         f"<figcaption>{_e(f.caption)}{pdf}</figcaption></figure>")  # fmt: skip
        parts.append("</div>")
    parts.append("<h2>Sample grids</h2>")
    if grids:
        parts.append(f"<p class='caption'>{_e(grid_caption)}</p><div class='grids'>")
        for g in grids:
            parts.append(f"<figure><img src='{_e(g.png)}' alt='{_e(g.caption)}'><figcaption>{_e(g.caption)}"
                         "</figcaption></figure>")  # fmt: skip
        parts.append("</div>")
    else:
        parts.append(
            "<p class='caption'>No sample grids in the store (runs write &lt;run&gt;/&lt;backbone&gt;/grids/*.png).</p>"
        )
    for i, (title, caption, t) in enumerate(extra_tables):
        if t.empty:
            continue
        parts.append(f"<h2>{_e(title)}</h2>" + (f"<p class='caption'>{_e(caption)}</p>" if caption else ""))
        parts.append(table_html(t, f"t{i}"))
    parts.append("<h2>Provenance</h2><p class='caption'>Per run, from env.json and config.json.</p>")
    parts.append(table_html(provenance, "provenance"))
    return _page(f"genbench: {suite}", "\n".join(parts))


def index_page(suites: list[tuple[str, str]], others: list[str] = ()) -> str:
    """suites: (name, one-line summary); others: paths (relative) of other reports to link."""
    items = "\n".join(f"<li><a href='{_e(s)}/index.html'>{_e(s)}</a> <span class='caption'>{_e(d)}</span></li>"
                      for s, d in suites)  # fmt: skip
    rest = "\n".join(f"<li><a href='{_e(o)}'>{_e(o)}</a></li>" for o in others)
    more = f"<h2>Other reports</h2><ul>\n{rest}\n</ul>" if others else ""
    return _page("genbench reports", f"<h1>genbench reports</h1><p class='sub'>One page per suite, built by "
                 f"<code>invoke report</code> from the results store.</p><ul>\n{items}\n</ul>{more}")  # fmt: skip
