"""The day's monitoring report: PNG plots (matplotlib, no display needed) and one self-contained HTML page.

The page embeds its images as data URIs, so it renders from anywhere (MLflow's artifact view, a downloaded file,
an e-mail); the PNGs are written beside it too, for MLflow's own image preview.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scoring.monitoring.attribution import Attribution
from scoring.monitoring.checks import CheckResult, worst
from scoring.monitoring.profile import Histogram

_COLOURS = {"ok": "#2e7d32", "warn": "#f9a825", "alert": "#c62828", "info": "#607d8b"}
_REFERENCE, _TODAY, _PREVIOUS = "#90a4ae", "#1565c0", "#ef6c00"


@dataclass
class ReportData:
    model: str
    day: dt.date
    version: int | None
    checks: list[CheckResult]
    features: dict[str, tuple[Histogram, Histogram]]  # name -> (reference, today)
    score_reference: Histogram | None = None
    score_today: Histogram | None = None
    score_previous: Histogram | None = None
    metric: str = ""
    metric_history: list[tuple[dt.date, float]] = field(default_factory=list)
    holdout_metric: float | None = None
    notes: list[str] = field(default_factory=list)
    attribution: Attribution | None = None  # mean |contribution| per feature, reference and today


def _proportions(hist: Histogram) -> np.ndarray:
    counts = np.asarray(hist.counts, dtype=np.float64)
    return counts / counts.sum() if counts.sum() else counts


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=80)
    return path


def _bars(ax, series: Sequence[tuple[str, Histogram, str]], title: str) -> None:
    labels = series[0][1].labels()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, hist, colour) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, _proportions(hist), width, label=name, color=colour)
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("share of non-missing rows")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def feature_plot(name: str, reference: Histogram, today: Histogram, check: CheckResult | None, path: Path) -> Path:
    fig = Figure(figsize=(5.2, 3.2), layout="constrained")
    ax = fig.subplots()
    status = f" - PSI {check.value:.3f} ({check.status})" if check and check.value is not None else ""
    title = (f"{name}{status}\nnull rate: reference {reference.null_rate:.1%}, today {today.null_rate:.1%}")
    _bars(ax, [("training window", reference, _REFERENCE), ("today", today, _TODAY)], title)
    if check is not None:
        ax.title.set_color(_COLOURS[check.status] if check.status in ("warn", "alert") else "black")
    return _save(fig, path)


def score_plot(data: ReportData, path: Path) -> Path | None:
    series = [(n, h, c) for n, h, c in (("held-out (training)", data.score_reference, _REFERENCE),
                                        ("previous day", data.score_previous, _PREVIOUS),
                                        ("today", data.score_today, _TODAY)) if h is not None]
    if not series or any(h.bins != series[0][1].bins for _, h, _ in series):
        return None
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    _bars(fig.subplots(), series, f"{data.model}: score distribution")
    return _save(fig, path)


def attribution_plot(data: ReportData, path: Path) -> Path | None:
    """Each feature's mean |contribution| today against the training window's, side by side."""
    found = data.attribution
    if found is None:
        return None
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(found.features))
    ax.bar(x - 0.2, found.reference, 0.4, label="training window", color=_REFERENCE)
    ax.bar(x + 0.2, found.today, 0.4, label="today", color=_TODAY)
    ax.set_xticks(x, found.features, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("mean |contribution| (margin)")
    ax.set_title(f"{data.model}: influence of each feature (attribution drift)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def metric_plot(data: ReportData, path: Path) -> Path | None:
    if not data.metric_history:
        return None
    days, values = zip(*sorted(data.metric_history), strict=True)
    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(days, values, marker="o", color=_TODAY, label=f"realised {data.metric}")
    if data.holdout_metric is not None:
        ax.axhline(data.holdout_metric, color=_REFERENCE, linestyle="--", label=f"held-out {data.metric}")
    ax.set_title(f"{data.model}: realised {data.metric} by prediction date", fontsize=9)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return _save(fig, path)


def _img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _check_rows(checks: Sequence[CheckResult]) -> str:
    order = {"alert": 0, "warn": 1, "ok": 2, "info": 3}
    rows = []
    for c in sorted(checks, key=lambda c: (order[c.status], c.check)):
        value = "" if c.value is None else f"{c.value:.4g}"
        limits = "" if c.warn is None else f"{c.warn:g} / {c.alert:g}"
        rows.append(f'<tr class="{c.status}"><td>{html.escape(c.check)}</td><td>{value}</td><td>{limits}</td>'
                    f'<td><span class="badge {c.status}">{c.status}</span></td><td>{html.escape(c.detail)}</td></tr>')
    return "\n".join(rows)


def write_report(data: ReportData, folder: Path) -> Path:
    """Write the PNGs and index.html into `folder`; returns the HTML page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    by_name = {c.check: c for c in data.checks}
    images: list[tuple[str, Path]] = []
    if (path := score_plot(data, folder / "score_distribution.png")) is not None:
        images.append(("Score distribution", path))
    if (path := attribution_plot(data, folder / "attribution.png")) is not None:
        images.append(("Feature influence: mean |contribution|", path))
    if (path := metric_plot(data, folder / "metric_history.png")) is not None:
        images.append((f"Realised {data.metric}", path))
    feature_images = [(name, feature_plot(name, ref, today, by_name.get(f"psi.{name}"),
                                          folder / f"feature_{name}.png"))
                      for name, (ref, today) in data.features.items()]
    overall = worst(data.checks)
    css = " ".join(f".badge.{k} {{background: {v};}}" for k, v in _COLOURS.items())
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in data.notes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(data.model)} monitoring {data.day}</title>
<style>
body {{font-family: sans-serif; margin: 1.5em; color: #222;}}
table {{border-collapse: collapse; font-size: 0.85em;}} td, th {{border: 1px solid #ccc; padding: 3px 8px;}}
tr.alert td {{background: #ffebee;}} tr.warn td {{background: #fff8e1;}}
.badge {{color: white; border-radius: 4px; padding: 1px 6px;}} {css}
.grid {{display: flex; flex-wrap: wrap; gap: 8px;}} .note {{color: #555;}}
</style></head><body>
<h1>{html.escape(data.model)} - {data.day} <span class="badge {overall}">{overall}</span></h1>
<p>Model version {data.version if data.version is not None else "n/a"}; {len(data.checks)} checks,
{sum(c.status == "alert" for c in data.checks)} alert(s), {sum(c.status == "warn" for c in data.checks)} warning(s).</p>
{notes}
<h2>Checks</h2>
<table><tr><th>check</th><th>value</th><th>warn / alert</th><th>status</th><th>detail</th></tr>
{_check_rows(data.checks)}
</table>
{"".join(f"<h2>{html.escape(title)}</h2>{_img(path, title)}" for title, path in images)}
<h2>Features: today against the training window</h2>
<div class="grid">{"".join(_img(path, name) for name, path in feature_images)}</div>
</body></html>
"""
    index = folder / "index.html"
    index.write_text(page)
    return index
