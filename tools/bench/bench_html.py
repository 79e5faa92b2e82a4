"""The benchmark's HTML page: the table bench.py prints, and a chart per
measure with each round's figure for gracefuld (memory and journal mode)
and for nginx, so that the spread behind each median is visible. One self-contained file (inline SVG
and CSS, no script, no network).

    page(results, head, table_markdown) -> str
"""

import html
import math
import re

# gracefuld is memory mode (the default durability); journal is
# DURABILITY=redis.
SERIES = (("gracefuld", "#1f77b4"), ("journal", "#2ca02c"),
          ("nginx", "#ff7f0e"))
W, H, LEFT, TOP = 360, 150, 56, 24

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; } h2 { font-size: 15px; margin-top: 20px; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
.chart h3 { font-size: 12px; margin: 0; font-weight: 600; color: #444; }
svg text { font: 10px system-ui, sans-serif; fill: #333; }
.legend span { margin-right: 12px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px;
            margin-right: 4px; }
"""


def esc(x):
    return html.escape(str(x), quote=True)


def nice_step(vmax, ticks=4):
    """A round step (1, 2 or 5 times a power of ten) for about ticks
    grid lines up to vmax."""
    raw = vmax / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if raw <= m * mag)


def md_table(text):
    """The Markdown table bench.py writes, as an HTML table."""
    rows = [line.strip().strip("|").split("|") for line in text.splitlines()
            if line.startswith("|")]
    rows = [r for r in rows if not all(re.fullmatch(r"\s*-*:?-*:?\s*", c)
                                       for c in r)]
    if not rows:
        return f"<pre>{esc(text)}</pre>"

    def cell(c, tag):
        c = esc(c.strip())
        c = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", c)
        c = re.sub(r"`(.+?)`", r"<code>\1</code>", c)
        return f"<{tag}>{c}</{tag}>"
    out = ["<table><tr>" + "".join(cell(c, "th") for c in rows[0]) + "</tr>"]
    for r in rows[1:]:
        out.append("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>")
    return "".join(out) + "</table>"


def chart(title, unit, series):
    """Per-round values ({name: [v, ...]}) as dots joined by lines, with
    each series' median as a dashed line."""
    values = [v for vs in series.values() for v in vs if v is not None]
    rounds = max((len(vs) for vs in series.values()), default=0)
    if not values or not rounds:
        return ""
    step = nice_step(max(values) * 1.05 or 1)
    vmax = step * math.ceil(max(values) * 1.05 / step) if max(values) else 1

    def x(i):
        return LEFT + (i + 0.5) / rounds * W

    def y(v):
        return TOP + H - v / vmax * H
    parts = [f'<line x1="{LEFT}" y1="{TOP + H}" x2="{LEFT + W}" '
             f'y2="{TOP + H}" stroke="#999"/>',
             f'<text x="4" y="{TOP - 4}">{esc(unit)}</text>']
    v = 0
    while v <= vmax + 1e-9:
        parts.append(f'<text x="{LEFT - 4}" y="{y(v) + 3:.1f}" '
                     f'text-anchor="end">{v:,.0f}</text>'
                     f'<line x1="{LEFT}" x2="{LEFT + W}" y1="{y(v):.1f}" '
                     f'y2="{y(v):.1f}" stroke="#eee"/>')
        v += step
    for i in range(rounds):
        parts.append(f'<text x="{x(i):.1f}" y="{TOP + H + 12}" '
                     f'text-anchor="middle">{i + 1}</text>')
    for name, colour in SERIES:
        vs = series.get(name) or []
        pts = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None]
        if not pts:
            continue
        parts.append(f'<polyline fill="none" stroke="{colour}" '
                     'stroke-width="1.5" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        for (a, b), v in zip(pts, [v for v in vs if v is not None]):
            parts.append(f'<circle class="round" data-server="{name}" '
                         f'data-value="{v}" cx="{a:.1f}" cy="{b:.1f}" r="3.5" '
                         f'fill="{colour}"><title>{name}: {v:,}</title>'
                         '</circle>')
        ordered = sorted(v for v in vs if v is not None)
        med = ordered[len(ordered) // 2] if len(ordered) % 2 else \
            (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + W}" y1="{y(med):.1f}" '
                     f'y2="{y(med):.1f}" stroke="{colour}" '
                     'stroke-dasharray="4,3"/>')
    return (f'<div class="chart"><h3>{esc(title)}</h3>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + W + 10}" '
            f'height="{TOP + H + 18}" role="img" aria-label="{esc(title)}">'
            + "".join(parts) + "</svg></div>")


def per_round(rounds, path):
    """{server: [value of each round]}, path a function of one server's
    figures in a round."""
    out = {}
    for name, _ in SERIES:
        vals = []
        for r in rounds:
            try:
                vals.append(path(r[name]))
            except (KeyError, TypeError):
                vals.append(None)
        out[name] = vals
    return out


def charts(results):
    out = []
    tp = results.get("throughput")
    if tp:
        for w, what in (("steady", "steady state"),
                        ("http_only", "before the first INCR falls due"),
                        ("pipelined", "pipelined")):
            out.append(chart(f"throughput, {what} (wrk), per round",
                             "req/s", per_round(tp["rounds"],
                                                lambda s: s[w]["rps"])))
            if w == "pipelined":
                continue  # no latency: see bench_table.py
            out.append(chart(f"latency at saturation, {what}: p99 (wrk)",
                             "µs", per_round(tp["rounds"],
                                             lambda s: s[w]["lat_us"]["p99"])))
    lt = results.get("latency")
    if lt:
        for q, name in (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9")):
            out.append(chart(
                f"latency at {lt['rate']:,} req/s constant: {name}", "µs",
                per_round(lt["rounds"], lambda s: s["lat_us"][q])))
    return "".join(out)


def page(results, head, table_markdown):
    legend = "".join(f'<span><i style="background:{c}"></i>{n}</span>'
                     for n, c in SERIES)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>gracefuld benchmark</title><style>{CSS}</style></head>'
            f'<body><h1>gracefuld benchmark</h1><p>{esc(head)}</p>'
            f'{md_table(table_markdown)}<h2>each round</h2>'
            f'<p>Dots are rounds (each runs both servers back to back), '
            f'dashed lines the medians.</p><div class="legend">{legend}</div>'
            f'<div class="charts">{charts(results)}</div></body></html>\n')
