"""One self-contained HTML page for run folders: what a person reads instead of JSON.

The page needs no server, no network and no script: the CSS is inline and the bar charts are
embedded as base64 data URIs, so it can be mailed, archived or opened from a USB stick. Every
piece of text that comes from a run folder is escaped; only markup built here goes in as is.

`load_runs` reads folders (and raises SublearnError for a bad one, before anything is
written): the typed results (results_model), the config from the manifest, the plots and any
audit or defence file with its figure; `render` turns what was read into the page and touches
no file. `render` can open the page with findings (`sublearn demo` gives its three): a
heading, one line in plain words and the figure that shows it, each.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.analysis.records import EstimatorResults, Provenance, Results, load_run
from sublearn.analysis.results import CROSSOVER_PLOT, SUMMARY_COLUMNS, estimator_label, plot_path
from sublearn.analysis.stats import Difference, Interval
from sublearn.stages.estimators import ESTIMATORS
from sublearn.store import MANIFEST, read_json

# Files that later stages may leave in a run folder, and the figure each one comes with.
EXTRAS = {"audit.json": "audit.png", "defend.json": "defend.png"}
# The estimator the summary compares runs on, when a run has it.
SUMMARY_ESTIMATOR = "exact_heldout"


@dataclass(frozen=True)
class RunData:
    """Everything the page shows about one run folder, read from disk."""

    label: str
    path: str
    results: Results
    config: dict[str, Any] | None  # from the manifest, when the folder has one
    plots: dict[str, bytes]  # estimator -> PNG
    extras: dict[str, Any]  # file name in EXTRAS -> its JSON
    figures: dict[str, bytes]  # the crossover's and the extras' PNGs, by file name


@dataclass(frozen=True)
class Finding:
    """One result stated for a reader: what was tested, what it showed in plain words, the
    figure that shows it, and the measured figures behind the words."""

    heading: str
    reading: str
    figure: bytes | None  # PNG
    alt: str
    measured: str


def read_run(path: Path, label: str) -> RunData:
    """Read one run folder; a missing folder or results.json is the user's to fix."""
    results = load_run(path)
    manifest = read_json(path / MANIFEST) if (path / MANIFEST).is_file() else {}
    plots = {est: plot_path(path, est).read_bytes() for est in results.estimators
             if plot_path(path, est).is_file()}
    extras = {name: read_json(path / name) for name in EXTRAS if (path / name).is_file()}
    figures = {name: (path / name).read_bytes() for name in (CROSSOVER_PLOT, *EXTRAS.values())
               if (path / name).is_file()}
    return RunData(label, str(path), results, manifest.get("config"), plots, extras, figures)


def load_runs(paths: Sequence[Path]) -> list[RunData]:
    """Read every folder first, so one bad folder stops the report before a byte is written.

    Runs are labelled by folder name, or by their whole path when two names collide.
    """
    names = [p.name for p in paths]
    return [read_run(p, p.name if names.count(p.name) == 1 else str(p)) for p in paths]


# --- markup --------------------------------------------------------------------------------


class Html(str):
    """Markup built in this module: inserted as is. Any other text is escaped."""


def _e(x: object) -> Html:
    return x if isinstance(x, Html) else Html(html.escape(str(x)))


def _join(parts: Iterable[object]) -> Html:
    return Html("".join(_e(p) for p in parts))


def _tag(name: str, body: object = "", cls: str | None = None, **attrs: str) -> Html:
    if cls:
        attrs["class"] = cls
    at = "".join(f' {k}="{html.escape(v)}"' for k, v in attrs.items())
    return Html(f"<{name}{at}>{_e(body)}</{name}>")


def _table(head: Sequence[object], rows: Iterable[Sequence[object]],
           num: Iterable[int] = ()) -> Html:
    """A table; the columns whose indices are in `num` hold numbers and align right."""
    right = set(num)
    th = _join(_tag("th", h) for h in head)
    trs = [_join(_tag("td", c, cls="num" if i in right else None) for i, c in enumerate(r))
           for r in rows]
    # Wide tables scroll inside their box instead of running off the page.
    return _tag("div", _tag("table", _join([_tag("thead", _tag("tr", th)),
                                            _tag("tbody", _join(_tag("tr", r) for r in trs))])),
                cls="wide")


def _value(v: object, short: bool = False) -> str:
    """A JSON value as text: JSON for lists, objects, booleans and null.

    Floats are exact by default (a learning rate or a timestamp must read as it was set);
    `short` rounds them to 4 significant digits, for tables of measurements.
    """
    if isinstance(v, float) and short:
        return f"{v:.4g}"
    if isinstance(v, (bool, float)) or v is None:
        return json.dumps(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as dotted keys (for a config: the keys `sublearn run --set` takes)."""
    out: list[tuple[str, Any]] = []
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _kv_table(obj: Mapping[str, Any]) -> Html:
    return _table(("key", "value"), ((k, _value(v)) for k, v in _flatten(obj)))


def _interval(iv: Interval, signed: bool = True) -> Html:
    """[low, high], bold with a star when it excludes 0 (for differences)."""
    f = "+.4f" if signed else ".4f"
    text = f"[{iv.low:{f}}, {iv.high:{f}}]"
    if signed and iv.excludes(0.0):
        return _tag("span", text + " *", cls="sig")
    return _e(text)


def _width_ratio(paired: Interval, welch: Interval) -> str:
    """How wide the paired interval is next to Welch's: below 1 is what pairing bought."""
    pw, ww = paired.high - paired.low, welch.high - welch.low
    if not (math.isfinite(pw) and math.isfinite(ww)) or ww == 0:
        return "—"
    return f"{pw / ww:.2f}"


def _p(x: float) -> str:
    return f"{x:.3g}"


def _p_cell(d: Difference) -> Html:
    """The t-test and permutation p-values, over how the permutations were counted."""
    how = f"exact over {d.resamples}" if d.exact else f"{d.resamples} draws"
    return _join([f"{_p(d.t_p)} / {_p(d.permutation_p)}", Html("<br>"),
                  _tag("span", how, cls="note")])


# --- sections ------------------------------------------------------------------------------


def _summary_estimator(results: Results) -> str:
    ests = results.estimators
    return ests[0] if ests and SUMMARY_ESTIMATOR not in ests else SUMMARY_ESTIMATOR


def _summary(runs: Sequence[RunData]) -> Html:
    """One row per run: the headline comparisons with both intervals, rank, channel, time."""
    chosen = [r.results.estimates.get(_summary_estimator(r.results)) for r in runs]
    cols = [(a, b, h) for a, b, h in SUMMARY_COLUMNS
            if any(e and e.comparison(a, b) for e in chosen)]
    head = ["run", "target", "estimator", *[f"{h} (Welch, then paired)" for _, _, h in cols],
            "target rank", "channel ratio", "seconds"]
    rows = []
    for i, (r, e) in enumerate(zip(runs, chosen)):
        res = r.results
        cells: list[object] = []
        for a, b, _ in cols:
            c = e.comparison(a, b) if e else None
            if c is None:
                cells.append("—")
                continue
            welch = c.welch.diff
            cells.append(_join([f"{welch.mean:+.4f} ", _interval(welch), Html("<br>"),
                                "paired ", _interval(c.paired.diff)]))
        rank = e.target_rank if e else None
        rows.append([_tag("a", r.label, href=f"#run-{i}"), res.target,
                     _summary_estimator(res), *cells,
                     f"{rank.rank}/{rank.of}" if rank else "—",
                     f"{res.channel.ratio:.3f}" if res.channel else "—",
                     f"{res.seconds:.0f}"])
    n = len(head)
    return _join([_tag("h2", "Summary"),
                  _tag("p", "Mean difference and its 95% interval over student seeds (* ="
                       " excludes 0): Welch on the first line, paired by seed on the second.",
                       cls="note"),
                  _table(head, rows, num=range(3, n))])


def _estimates(e: EstimatorResults) -> Html:
    rows: list[list[object]] = [[name, f"{v:.4f}", "(single model)", "", ""]
                                for name, v in e.reference.measured().items()]
    for arm, a in e.arms.items():
        iv = a.interval
        rows.append([arm, f"{iv.mean:.4f}", _interval(iv, signed=False), str(iv.n),
                     " ".join(f"{x:.4f}" for x in a.values)])
    return _table(("model / arm", "mean", "95% interval over seeds", "n", "per seed"), rows,
                  num=(1, 2, 3, 4))


def _differences(e: EstimatorResults) -> Html:
    head = ("comparison", "difference", "Welch 95%", "p: Welch t / permutation", "paired 95%",
            "p: paired t / sign-flip", "width paired / Welch", "meaning")
    rows = [[c.name, f"{c.welch.diff.mean:+.4f}", _interval(c.welch.diff), _p_cell(c.welch),
             _interval(c.paired.diff), _p_cell(c.paired),
             _width_ratio(c.paired.diff, c.welch.diff), c.meaning]
            for c in e.comparisons]
    return _table(head, rows, num=range(1, len(head) - 1))


def _rank(e: EstimatorResults, target: str) -> Html:
    rank = e.target_rank
    if not rank:
        return Html("")
    ordered = sorted(rank.movement.items(), key=lambda kv: (-kv[1], kv[0]))
    table = _table(("rank", "option", "treated − control"),
                   ([i, o, f"{m:+.5f}"] for i, (o, m) in enumerate(ordered, 1)), num=(0, 2))
    return _join([
        _tag("p", _join(["Target ", _tag("b", target), " ranks ",
                         _tag("b", f"{rank.rank} of {rank.of}"),
                         " by how much each option moved from control to treated",
                         " (1 = moved most)."])),
        _tag("details", _join([_tag("summary", "movement of every option"), table]))
        if rank.movement else "",
    ])


def _img(png: bytes | None, alt: str) -> Html:
    """A PNG embedded as a data URI, or a note where the run folder has none."""
    if png is None:
        return _tag("p", f"Not in the run folder: {alt}.", cls="note")
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return Html(f'<img src="{html.escape(uri)}" alt="{html.escape(alt)}">')


def _filter(res: Results) -> Html:
    reports = res.filter
    if not reports:
        return _tag("p", "No filter report in results.json.", cls="note")
    reasons = list(dict.fromkeys(k for rep in reports.values() for k in rep.rejected))
    rows = [[name, rep.total, rep.kept, f"{rep.kept_fraction:.1%}",
             *[rep.rejected.get(k, 0) for k in reasons]]
            for name, rep in reports.items()]
    head = ["dataset", "total", "kept", "kept %", *[f"rejected: {k}" for k in reasons]]
    return _table(head, rows, num=range(1, len(head)))


def _channel(res: Results) -> Html:
    ch = res.channel
    if ch is None:
        return _tag("p", "Not measured in this run (it needs the other-target teacher).",
                    cls="note")
    fields = dict(ch)
    return _join([
        _tag("p", "Per-token mean |log p| gaps on the neutral base's completions: shift ="
             " teacher vs base, specificity = teacher vs other-target teacher; ratio ="
             " specificity / shift.", cls="note"),
        _table(list(fields), [[_value(v, short=True) for v in fields.values()]],
               num=range(len(fields)))])


def _crossover(res: Results) -> Html:
    """Each student toward its own teacher's target (pipeline.crossover), per estimator."""
    rows = []
    for est, e in res.estimates.items():
        if (x := e.crossover) is None:
            continue
        iv = x.interval
        ranks = ", ".join(f"{name} {r.rank}/{r.of}" for name, r in x.ranks.items())
        rows.append([est, f"{iv.mean:+.4f}", _interval(iv),
                     " ".join(f"{v:+.4f}" for v in x.values), ranks])
    return _join([
        _tag("p", "Per seed: (target student − other student) on P(target) + (other student −"
             " target student) on P(other). Positive when each student moves toward its own"
             " teacher's target, whatever moves every student alike. Ranks: each target among"
             " all options by how much its own students moved it.", cls="note"),
        _table(["estimator", "crossover", "95% interval", "per seed", "ranks"], rows)])


def _provenance(prov: Provenance, path: str) -> Html:
    created = _dt.datetime.fromtimestamp(prov.created_unix, _dt.UTC)
    return _kv_table({"run folder": path, **prov.model_dump(),
                      "created (UTC)": created.strftime("%Y-%m-%d %H:%M:%S")})


def _audit(summary: Mapping[str, Any], target: str) -> Html:
    """`sublearn audit`'s ranking: what was tested, then one row per candidate, best first,
    the run's target in bold. Its file paths stay in audit.json: they say nothing here."""
    level = summary["level"]
    decoys = f" and {summary['decoy_rows']:,} decoy rows" if summary.get("decoy_rows") else ""
    note = (f"{summary['rows']:,} rows of the data against {summary['reference_rows']:,}"
            f" reference rows{decoys}. Test: {summary['test']}; score in nats per token, with"
            f" its 95% interval. p-values {summary['correction'].capitalize()}-corrected over"
            f" the {len(summary['candidates'])} candidates ({summary['permutations']:,}"
            f" permutations). Flagged at corrected p < {level}:"
            f" {', '.join(summary['flagged']) or 'none'}.")
    rows = [[i, _tag("b", c["option"]) if c["option"] == target else c["option"],
             f"{c['score']:+.4f}", f"[{c['low']:+.4f}, {c['high']:+.4f}]",
             f"{c['z']:.2f}", _p(c["p"]), _p(c["p_adjusted"]),
             "yes" if c["p_adjusted"] < level else ""]
            for i, c in enumerate(summary["candidates"], 1)]
    head = ("rank", "candidate", "score", "95% interval", "z", "p",
            f"{summary['correction'].capitalize()} p", "flagged")
    return _join([_tag("p", note, cls="note"), _table(head, rows, num=(0, *range(2, 7)))])


def _defence(data: Mapping[str, Any], target: str) -> Html:
    """`sublearn defend`'s table as its defend.md has it (the run's target is in the note)."""
    # Imported here: sublearn.apps.defend imports the pipeline, which a page without a defence
    # file never needs.
    from sublearn.apps.defend import HEAD, cells, notes

    rows = data["rows"]
    text = {HEAD.index("defence"), HEAD.index("audit's top")}
    return _join([_table(HEAD, [cells(r) for r in rows],
                         num=[i for i in range(len(HEAD)) if i not in text]),
                  _tag("p", notes(data, rows), cls="note")])


# Each extra file's section: its heading and its table.
SECTIONS = {"audit.json": ("Audit", _audit), "defend.json": ("Defences", _defence)}


def _extra(r: RunData, name: str) -> Html:
    """An audit or defence file as its table and figure. A file without the fields the
    command writes is named, not shown: the rest of the page is still worth having."""
    heading, table = SECTIONS[name]
    try:
        body = table(r.extras[name], r.results.target)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        body = _tag("p", f"{name} does not hold what the command writes ({e!r}); not shown.",
                    cls="note")
    figure = r.figures.get(EXTRAS[name])  # a folder may hold the file without its figure
    return _join([_tag("h3", heading), body,
                  _img(figure, f"the figure of {name}") if figure else ""])


def _run_section(r: RunData, i: int) -> Html:
    res = r.results
    target = res.target
    facts = [f"target '{target}'", f"student seeds {res.seeds}",
             f"{res.seconds:.0f} s of wall time"]
    parts: list[object] = [
        _tag("h2", f"Run {r.label}", id=f"run-{i}"),
        _tag("p", " · ".join(facts), cls="note"),
    ]
    for est, e in res.estimates.items():
        parts += [
            _tag("h3", f"{estimator_label(est, ESTIMATORS)} ({est})"),
            _tag("h4", "Estimates"), _estimates(e),
            _tag("h4", "Differences (a − b)"),
            _tag("p", "Welch treats the arms as independent groups; paired compares them seed"
                 " by seed (arms that share a student seed share its initialisation,"
                 " subsample and data order). * = the 95% interval excludes 0. Under each pair"
                 " of p-values: whether every relabelling was counted (exact; with n seeds"
                 " the sign-flip p-value cannot go below 2/2^n) or how many were drawn.",
                 cls="note"),
            _differences(e), _rank(e, target),
            _img(r.plots.get(est), f"bar chart: {est}, target {target}"),
        ]
    if any(e.crossover for e in res.estimates.values()):
        parts += [_tag("h3", "Crossover"), _crossover(res),
                  _img(r.figures.get(CROSSOVER_PLOT), "crossover chart")]
    parts += [_extra(r, name) for name in r.extras]
    # What made the numbers comes after them: a reader looks for the result first, and the
    # configuration (a hundred rows) folds away until wanted.
    config = (_kv_table(r.config) if r.config
              else _tag("p", f"No configuration recorded ({MANIFEST} is missing).", cls="note"))
    parts += [
        _tag("h3", "Filter"), _filter(res),
        _tag("h3", "Channel"), _channel(res),
        _tag("h3", "Configuration"),
        _tag("details", _join([_tag("summary", "every field of the config"), config])),
        _tag("h3", "Provenance"), _provenance(res.provenance, r.path),
    ]
    return _tag("section", _join(parts))


def _findings(findings: Sequence[Finding]) -> Html:
    """The page's opening: each finding's words beside its figure, before any table."""
    return _join(_tag("section", _join([
        _tag("div", _join([_tag("h2", f.heading), _tag("p", f.reading, cls="reading"),
                           _tag("p", f.measured, cls="note")])),
        _img(f.figure, f.alt)]), cls="finding") for f in findings)


CSS = """
body{font-family:"DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:#1f2328;max-width:1200px;margin:1.5rem auto;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}
h2{font-size:1.3rem;border-bottom:2px solid #d0d7de;padding-bottom:.2rem;margin-top:2.2rem}
h3{font-size:1.1rem;margin:1.6rem 0 .4rem}
h4{font-size:.95rem;margin:1rem 0 .3rem;color:#444}
table{border-collapse:collapse;margin:.4rem 0 .8rem;font-size:.85rem}
.wide{overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sig{font-weight:700;color:#0b5394}
.note{color:#57606a;font-size:.85rem}
img{max-width:100%;border:1px solid #e5e7eb;margin:.4rem 0}
details{margin:.3rem 0 .8rem}
summary{cursor:pointer;color:#0b5394;font-size:.9rem}
a{color:#0b5394}
.finding{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,3fr);gap:0 1.5rem;
  align-items:start;border-bottom:1px solid #d0d7de;padding:.4rem 0 .8rem}
.finding h2{border:0;margin-top:.6rem}
.finding img{border:0}
.reading{font-size:1.15rem;line-height:1.45}
@media (max-width:800px){.finding{grid-template-columns:1fr}}
"""


def render(runs: Sequence[RunData], findings: Sequence[Finding] = (),
           title: str | None = None) -> str:
    """The whole page for one or more runs: the findings first when there are any, then a
    summary table when there are several runs, then each run. Findings alone (no run) make
    a page too, given its title."""
    if not runs and not (findings and title):
        raise ValueError("render needs at least one run, or findings and a title")
    title = title or ("sublearn report: "
                      + (runs[0].label if len(runs) == 1 else f"{len(runs)} runs"))
    body = [_tag("h1", title), _findings(findings)]
    if len(runs) > 1:
        body.append(_summary(runs))
    body += [_run_section(r, i) for i, r in enumerate(runs)]
    return ("<!DOCTYPE html>\n"
            + _tag("html", _join([
                Html('<head><meta charset="utf-8">'
                     '<meta name="viewport" content="width=device-width, initial-scale=1">'),
                _tag("title", title), Html(f"<style>{CSS}</style></head>"),
                _tag("body", _join(body))]), lang="en")
            + "\n")
