"""`python -m benchmark build ENTRIES... --out site/`: static leaderboard pages, plain HTML with inline CSS, JS and SVG
figures (no server, no CDN: they open offline from `site/index.html`).

One board per protocol version, threat model and standing: entries of different protocol versions never share a
table, and non-standard entries (quick settings, overrides, unofficial data) get boards of their own, marked so.
Every number cell carries the entry's full-precision value in `data-value` (what the table sorts by).
"""
from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmark import figures
from benchmark.entry import Entry
from benchmark.scores import THREAT_NAMES, row
from core.files import write_text_atomic

INDEX = "index.html"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#eee;cursor:pointer;user-select:none}th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"}td.name,th.name{text-align:left}.flag{color:#b00}
.figures{display:flex;flex-wrap:wrap;gap:1em;margin-top:1.5em}.figure svg{max-width:100%;height:auto}
.nonstandard{background:#fff3cd;padding:.5em;border:1px solid #e0c060}
"""
# sorts the table of the clicked header by the cells' data-value (numbers; missing values last)
SCRIPT = """
document.querySelectorAll('table.leaderboard th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var ascending = !th.classList.contains('sorted-asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
    th.classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
    var rows = Array.prototype.slice.call(body.rows);
    function key(r) { var v = r.cells[column].getAttribute('data-value'); return v === null || v === '' ? null :
      (isNaN(Number(v)) ? v : Number(v)); }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null) return 1; if (y === null) return -1;
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _columns(rows: Sequence[dict]) -> list[tuple[str, str, Any]]:
    """(id, header, getter) of the table's columns; the AutoAttack columns follow the boards' epsilons."""
    epsilons = [e["eps"] for e in rows[0]["epsilons"]] if rows else []
    columns = [("name", "entry", lambda r: r["name"]), ("model", "model", lambda r: r["model"].get("class")),
               ("architecture", "architecture", lambda r: r["model"].get("architecture")),
               ("clean_bacc", "clean bacc", lambda r: r["clean_bacc"]),
               ("clean_acc", "clean acc", lambda r: r["clean_acc"]), ("clean_auroc", "clean AUROC",
                                                                     lambda r: r["clean_auroc"])]
    for i, eps in enumerate(epsilons):
        columns.append((f"aa_bacc@{eps}", f"AA bacc {eps}", lambda r, i=i: r["epsilons"][i]["aa_bacc"]))
    if epsilons:
        columns += [("aa_acc", f"AA acc {epsilons[-1]}", lambda r: r["aa_acc"]),
                    ("pgd_bacc", f"PGD bacc {epsilons[-1]}", lambda r: r["epsilons"][-1]["pgd_bacc"])]
    columns += _certified_columns(rows)
    columns += [("corr_bacc", "MedMNIST-C bacc", lambda r: r["corr_bacc"]), ("corr_be", "BE", lambda r: r["corr_be"]),
                ("corr_rbe", "rBE", lambda r: r["corr_rbe"]), ("corr_mce", "mCE", lambda r: r["corr_mce"]),
                ("clean_ece", "clean ECE", lambda r: r["clean_ece"]), ("aa_ece", "AA ECE", lambda r: r["aa_ece"]),
                ("clean_nll", "clean NLL", lambda r: r["clean_nll"]), ("aa_nll", "AA NLL", lambda r: r["aa_nll"]),
                ("clean_brier", "clean Brier", lambda r: r["clean_brier"]),
                ("aa_brier", "AA Brier", lambda r: r["aa_brier"]),
                ("flags", "screen", lambda r: len(r["flags"]))]
    return columns


def _certified_columns(rows: Sequence[dict]) -> list[tuple[str, str, Any]]:
    """Randomized smoothing's certified balanced accuracy at every L2 radius some entry of the board carries, and its
    sigma; an entry without a certified section (or without that radius) shows an empty cell. None on a board where
    no entry is certified."""
    radii = dict(sorted({label: radius for r in rows for label, radius in r["cert_radii"].items()}.items(),
                        key=lambda pair: pair[1]))
    if not radii:
        return []
    return [(f"cert_bacc@{label}", f"certified bacc L2 {radius:g}", lambda r, label=label: r["cert_bacc"].get(label))
            for label, radius in radii.items()] + [("cert_sigma", "smoothing sigma", lambda r: r["cert_sigma"])]


def _cell(column: str, value: Any, row: dict) -> str:
    if column == "flags":
        title = html.escape(" | ".join(row["flags"]))
        text = "ok" if not value else f"{value} flag{'s' * (value > 1)}"
        css = "flag" if value else ""
        return f'<td data-column="flags" data-value="{value}" class="{css}" title="{title}">{text}</td>'
    if isinstance(value, float):
        return f'<td data-column="{html.escape(column)}" data-value="{value!r}">{value:.4f}</td>'
    css = ' class="name"' if column in ("name", "model", "architecture") else ""
    text = "" if value is None else html.escape(str(value))
    return f'<td data-column="{html.escape(column)}" data-value="{text}"{css}>{text or "&ndash;"}</td>'


def board_table(rows: Sequence[dict]) -> str:
    columns = _columns(rows)
    names = ("name", "model", "architecture")
    head = "".join(f'<th data-column="{html.escape(c)}"{" class=name" if c in names else ""}>{html.escape(h)}</th>'
                   for c, h, _ in columns)
    body = "\n".join(f'<tr data-entry="{html.escape(r["name"])}">'
                     + "".join(_cell(c, get(r), r) for c, _, get in columns) + "</tr>" for r in rows)
    return f'<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n<script>{SCRIPT}</script></body></html>\n")


def board_page(protocol: str, norm: str, standard: bool, entries: Sequence[Entry]) -> str:
    rows = sorted((row(e, norm) for e in entries), key=lambda r: -(r["aa_bacc"] or 0.0))
    eps = rows[0]["eps"]
    flag, size = entries[0].dataset
    note = "" if standard else ('<p class="nonstandard">Non-standard entries (quick settings, overrides or unofficial '
                                "data): not comparable with the standard board.</p>")
    figs = [("robust-vs-clean", figures.robust_vs_clean(rows, eps)),
            ("calibration", figures.calibration_beside_accuracy(rows, eps))]
    if any(r["corruptions"] for r in rows):
        figs.append(("corruption-heatmap", figures.corruption_heatmap(rows)))
    figure_html = "".join(f'<div class="figure" id="{name}">{svg}</div>' for name, svg in figs)
    body = (f'<p><a href="{INDEX}">all boards</a></p><h1>{html.escape(flag)} {size} px, {THREAT_NAMES[norm]}</h1>'
            f"<p>protocol <code>{html.escape(protocol)}</code>; ranked by AutoAttack balanced accuracy at {eps}; "
            f"bacc is the headline, acc and AUROC beside it. Click a header to sort.</p>{note}"
            f"{board_table(rows)}<div class=\"figures\">{figure_html}</div>")
    return _page(f"{flag} {size} {THREAT_NAMES[norm]} {protocol}", body)


def boards(entries: Sequence[Entry]) -> dict[tuple[str, str, bool], list[Entry]]:
    """{(board label, norm, standard): entries}: never two protocol versions, two mCE baselines (Entry.board_label), or
    standard and not, in one board."""
    out: dict[tuple[str, str, bool], list[Entry]] = defaultdict(list)
    for entry in entries:
        for norm in entry.norms():
            out[(entry.board_label, norm, entry.standard)].append(entry)
    return dict(sorted(out.items(), key=lambda item: (item[0][0], not item[0][2], item[0][1])))


def page_name(protocol: str, norm: str, standard: bool) -> str:
    return f"{protocol.replace('@', '-')}-{THREAT_NAMES[norm]}{'' if standard else '-nonstandard'}.html"


def _write(path: Path, text: str) -> Path:
    """A page written atomically, readable by a web server (the atomic writer's temporary file is private)."""
    write_text_atomic(path, text).chmod(0o644)
    return path


def build_site(entries: Sequence[Entry], out: Path, title: Optional[str] = None) -> Path:
    """Every board's page and the index linking them; returns the index."""
    links = []
    for (protocol, norm, standard), members in boards(entries).items():
        name = page_name(protocol, norm, standard)
        _write(out / name, board_page(protocol, norm, standard, members))
        links.append(f'<li><a href="{html.escape(name)}">{html.escape(protocol)} {THREAT_NAMES[norm]}'
                     f"{'' if standard else ' (non-standard)'}</a>: {len(members)} entries</li>")
    body = (f"<h1>{html.escape(title or 'medrobust benchmark')}</h1><p>One board per dataset, image size, protocol "
            f"version and threat model.</p><ul>{''.join(links)}</ul>")
    return _write(out / INDEX, _page(title or "medrobust benchmark", body))
