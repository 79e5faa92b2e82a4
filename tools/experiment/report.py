"""The HTML report of rolling-update experiments (rollout.py --report).

    render([result, ...]) -> str

One self-contained page: inline CSS and SVG, no script, no network, so it
opens from file:// anywhere. Each result (rollout.py's JSON, with its
"timeline") gets a column; several columns (--compare) share their scales.
On one time axis, in seconds after the load started, each column shows:

  - requests per 100 ms, stacked by outcome (by the time HAProxy accepted
    the connection; with keep-alive on, a bar counts connections);
  - one lane per replica: starting, serving, deleted, the shutdown phases it
    logged, SIGTERM, SIGKILL, its exit and drain report;
  - pending increments per replica, from its /metrics and its log;
  - the Redis counter against the running total of 200s.

Hooks for tests: each column is `.run[data-run=i]`, its verdict figures are
`#run<i>-<figure>` with `data-value`; bars `.bucket[data-bucket]` hold
`rect[data-outcome][data-count]`; lanes are `.lane[data-replica]` holding
`.event[data-kind]`.
"""

import html
import math

W = 600            # plot width, px
LEFT = 56          # room for the lane labels and the y axis
RIGHT = 70         # room for the end labels
OUTCOME_COLOURS = {"200": "#3a9a4a", "refused": "#d62728", "reset": "#ff7f0e",
                   "timeout": "#9467bd", "5xx": "#8c564b", "other": "#7f7f7f"}
STATE_COLOURS = {"starting": "#c8c8c8", "serving": "#8fd19e",
                 "deleted": "#d9ef8b", "delaying": "#fdd05a",
                 "draining": "#fb9a29", "flushing": "#6baed6"}
REPLICA_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GAP_S = 1.0        # pending samples further apart: not observed between
FIGURES = ("sent", "ok", "failed", "counter", "lost", "extra", "unknown")
FIGURE_NAMES = {"sent": "sent", "ok": "200 OK", "failed": "failed",
                "counter": "counter", "lost": "lost", "extra": "extra",
                "unknown": "unknown outcome"}

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 8px; }
h2 { font-size: 15px; margin: 4px 0; }
h3 { font-size: 12px; margin: 10px 0 0; color: #555; font-weight: 600; }
.runs { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.run { flex: 0 0 auto; width: 730px; }
.badge { padding: 1px 8px; border-radius: 4px; color: #fff; font-weight: 700; }
.pass { background: #2e7d32; } .fail { background: #c62828; }
table.verdict td, table.verdict th { padding: 0 10px 0 0; text-align: right; }
table.verdict th { font-weight: 400; color: #555; }
table.verdict td { font-size: 16px; font-weight: 700; }
.params { font-size: 11px; color: #555; }
.params span { white-space: nowrap; margin-right: 10px;
                display: inline-block; }
.problems { color: #c62828; }
svg { display: block; }
svg text { font: 10px system-ui, sans-serif; fill: #333; }
.legend span { margin-right: 10px; font-size: 11px; white-space: nowrap; }
.legend i { display: inline-block; width: 10px; height: 10px;
            margin-right: 3px; vertical-align: -1px; }
"""


def esc(x):
    return html.escape(str(x), quote=True)


def nice_step(span, ticks=8):
    raw = span / ticks if span > 0 else 1
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


class Scale:
    """The scales every column shares."""

    def __init__(self, results):
        self.t_end = 1.0
        self.bar_max = 1
        self.pending_max = 1
        self.count_max = 1
        for res in results:
            tl = res["timeline"]
            self.t_end = max(self.t_end, len(tl["buckets"]) * tl["bucket_s"],
                             *[e[0] for e in tl["lifecycle"]] or [0])
            self.bar_max = max(self.bar_max, *[sum(b.values())
                                               for b in tl["buckets"]] or [0])
            for samples in tl["pending"].values():
                self.pending_max = max(self.pending_max,
                                       *[n for _, n in samples] or [0])
            self.count_max = max(self.count_max, res["ok"], res["counter"],
                                 *[n for _, n in tl["counter"]] or [0])
        self.t_end = math.ceil(self.t_end)

    def x(self, t):
        return LEFT + max(0.0, min(t, self.t_end)) / self.t_end * W


def axis(scale, y, height):
    """The time axis at y, with grid lines up to y - height."""
    out = [f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + W}" y2="{y}" '
           'stroke="#999"/>']
    step = nice_step(scale.t_end)
    t = 0.0
    while t <= scale.t_end + 1e-9:
        x = scale.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{y - height}" x2="{x:.1f}" '
                   f'y2="{y}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{y + 11}" text-anchor="middle">'
                   f'{t:g}</text>')
        t += step
    return "".join(out)


def y_axis(top, height, vmax, label):
    step = nice_step(vmax, 4)
    out = [f'<text x="4" y="{top - 3}">{esc(label)}</text>']
    v = 0
    while v <= vmax + 1e-9:
        y = top + height - v / vmax * height
        out.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" '
                   f'text-anchor="end">{v:g}</text>')
        v += step
    return "".join(out)


def svg(width, height, body, label):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(label)}">'
            f'{body}</svg>')


def outcome_chart(res, scale):
    tl = res["timeline"]
    top, h = 14, 120
    bs = tl["bucket_s"]
    bw = max(1.0, bs / scale.t_end * W)
    parts = [axis(scale, top + h, h),
             y_axis(top, h, scale.bar_max, "per 100 ms")]
    for i, b in enumerate(tl["buckets"]):
        x = scale.x(i * bs)
        parts.append(f'<g class="bucket" data-bucket="{i}" '
                     f'data-t="{i * bs:.1f}">')
        y = top + h
        for o in tl["outcomes"]:
            n = b.get(o, 0)
            if not n:
                continue
            bh = n / scale.bar_max * h
            y -= bh
            parts.append(
                f'<rect data-outcome="{esc(o)}" data-count="{n}" '
                f'x="{x:.2f}" y="{y:.2f}" width="{bw:.2f}" height="{bh:.2f}" '
                f'fill="{OUTCOME_COLOURS.get(o, "#555")}">'
                f'<title>{i * bs:.1f}-{(i + 1) * bs:.1f} s: {n} {esc(o)}'
                f'</title></rect>')
        parts.append("</g>")
    what = ("requests" if tl["per_request"]
            else "connections (keep-alive on: one bar counts connections)")
    legend = "".join(f'<span><i style="background:{OUTCOME_COLOURS[o]}"></i>'
                     f'{esc(o)}</span>' for o in tl["outcomes"])
    return (f'<h3>{what} per 100 ms, by outcome</h3>'
            + svg(LEFT + W + RIGHT, top + h + 16, "".join(parts), what)
            + f'<div class="legend">{legend}</div>')


def lane_order(name):
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


def lanes(res, scale):
    tl = res["timeline"]
    events = {}
    for t, name, kind, detail in tl["lifecycle"]:
        events.setdefault(name, []).append((t, kind, detail))
    names = sorted((r["name"] for r in res["replicas"]), key=lane_order)
    roles = {r["name"]: r for r in res["replicas"]}
    row = 26
    top = 6
    parts = []
    for i, name in enumerate(names):
        y = top + i * row
        evs = sorted(events.get(name, []), key=lambda e: e[0])
        parts.append(f'<g class="lane" data-replica="{esc(name)}" '
                     f'data-role="{esc(roles[name]["role"])}">')
        parts.append(f'<text x="4" y="{y + 13}">{esc(name)}</text>')
        # The states between the events that change them.
        state, since = None, None
        end = scale.t_end
        spans = []
        for t, kind, detail in evs:
            new = {"started": "starting", "ready": "serving",
                   "deleted": "deleted"}.get(kind)
            if kind == "phase" and detail in STATE_COLOURS:
                new = detail
            if kind == "exit":
                if state:
                    spans.append((since, t, state))
                state = None
                continue
            if new and new != state:
                if state:
                    spans.append((since, t, state))
                state, since = new, t
        if state:
            spans.append((since, end, state))
        for a, b, st in spans:
            x1, x2 = scale.x(a), scale.x(b)
            parts.append(
                f'<rect class="state" data-state="{st}" x="{x1:.2f}" '
                f'y="{y + 4}" width="{max(0.5, x2 - x1):.2f}" height="12" '
                f'fill="{STATE_COLOURS[st]}"><title>{name} {st} '
                f'{a:.2f}-{b:.2f} s</title></rect>')
        for t, kind, detail in evs:
            parts.append(marker(scale.x(t), y, t, name, kind, detail))
        parts.append("</g>")
    h = top + len(names) * row + 4
    body = axis(scale, h, h - 2) + "".join(parts)
    legend = "".join(f'<span><i style="background:{c}"></i>{s}</span>'
                     for s, c in STATE_COLOURS.items())
    legend += ('<span>&#9660; deleted</span><span>| out of the Service'
               '</span><span>T SIGTERM</span><span style="color:#c62828">'
               '&#10006; SIGKILL</span><span>&#9679; exit</span>'
               '<span>+ replaces a crashed replica</span>')
    return ('<h3>replicas: lifecycle (phases from their logs)</h3>'
            + svg(LEFT + W + RIGHT, h + 16, body, "replica lanes")
            + f'<div class="legend">{legend}</div>')


def marker(x, y, t, name, kind, detail):
    tip = f"<title>{esc(name)} {esc(kind)} at {t:.2f} s" + (
        f": {esc(detail)}" if detail else "") + "</title>"
    head = (f'<g class="event" data-kind="{esc(kind)}" data-t="{t}" '
            f'data-detail="{esc(detail)}">')
    if kind == "deleted":
        shape = (f'<path d="M{x - 4:.1f},{y} h8 l-4,6 z" fill="#222"/>')
    elif kind == "unrouted":
        shape = (f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" '
                 f'y2="{y + 19}" stroke="#222" stroke-dasharray="2,2"/>')
    elif kind == "sigterm":
        shape = (f'<text x="{x:.1f}" y="{y + 24}" text-anchor="middle" '
                 f'font-weight="700">T</text>')
    elif kind == "sigkill":
        shape = (f'<path d="M{x - 5:.1f},{y + 5} l10,10 m0,-10 l-10,10" '
                 f'stroke="#c62828" stroke-width="2.5"/>'
                 f'<text x="{x + 7:.1f}" y="{y + 24}" fill="#c62828" '
                 f'style="fill:#c62828" font-weight="700">SIGKILL</text>')
    elif kind == "exit":
        # "exit 0 reason=drained ...": the status; a SIGKILL has its mark.
        words = detail.split(" ")
        short = esc(" ".join(words[:2]) if detail.startswith("exit")
                    else "" if words[0] == "SIGKILL" else words[0])
        shape = (f'<circle cx="{x:.1f}" cy="{y + 10}" r="3.5" fill="#222"/>'
                 f'<text x="{x + 6:.1f}" y="{y + 13}">{short}</text>')
    elif kind == "replacement":
        # A ReplicaSet's new pod for a crashed one.
        shape = (f'<text x="{x:.1f}" y="{y + 24}" text-anchor="middle" '
                 f'font-weight="700">+</text>')
    elif kind in ("started", "ready", "phase"):
        shape = ""  # the state colours show them
    else:  # a kind this report does not know yet: shown, not lost
        shape = (f'<path d="M{x:.1f},{y + 2} l4,8 l-4,8 l-4,-8 z" '
                 f'fill="#555"/>')
    return head + shape + tip + "</g>"


def polyline(points, colour, cls, extra="", step=True, width=1.5):
    if not points:
        return ""
    pts = []
    for i, (x, y) in enumerate(points):
        if step and i:
            pts.append(f"{x:.1f},{points[i - 1][1]:.1f}")
        pts.append(f"{x:.1f},{y:.1f}")
    return (f'<polyline class="{cls}" {extra} fill="none" stroke="{colour}" '
            f'stroke-width="{width}" points="{" ".join(pts)}"/>')


def pending_chart(res, scale):
    tl = res["timeline"]
    top, h = 14, 90
    names = sorted(tl["pending"], key=lane_order)
    parts = [axis(scale, top + h, h),
             y_axis(top, h, scale.pending_max, "pending")]
    legend = []
    for i, name in enumerate(names):
        colour = REPLICA_COLOURS[i % len(REPLICA_COLOURS)]
        samples = tl["pending"][name]
        parts.append(f'<g class="pending" data-replica="{esc(name)}">')
        # Observed runs as steps; where it went unobserved for longer (its
        # listener closed while it drained), a thin dashed line from the
        # last value seen to the next (its log, its exit).
        run = []
        for k, (t, n) in enumerate(samples):
            pt = (scale.x(t), top + h - n / scale.pending_max * h)
            if run and t - samples[k - 1][0] > GAP_S:
                parts.append(polyline(run, colour, "seen"))
                parts.append(polyline([run[-1], pt], colour, "unseen",
                                      'stroke-dasharray="2,3"', step=False,
                                      width=1))
                run = []
            run.append(pt)
        parts.append(polyline(run, colour, "seen") + "</g>")
        kills = [e[0] for e in tl["lifecycle"]
                 if e[1] == name and e[2] == "sigkill"]
        if kills:
            before = [n for t, n in tl["pending"][name] if t <= kills[0]]
            last = before[-1] if before else 0
            x, y = scale.x(kills[0]), top + h - last / scale.pending_max * h
            parts.append(
                f'<g class="lost" data-replica="{esc(name)}" '
                f'data-pending="{last}"><path d="M{x - 4:.1f},{y - 4:.1f} '
                f'l8,8 m0,-8 l-8,8" stroke="#c62828" stroke-width="2"/>'
                f'<title>{esc(name)}: SIGKILL at {kills[0]:.2f} s with '
                f'about {last} increments pending (last sample)</title></g>')
        legend.append(f'<span><i style="background:{colour}"></i>'
                      f'{esc(name)}</span>')
    return ('<h3>increments pending per replica (its /metrics while it '
            'listens, its log and exit while it drains; dashed: not seen in '
            'between)</h3>'
            + svg(LEFT + W + RIGHT, top + h + 16, "".join(parts), "pending")
            + f'<div class="legend">{"".join(legend)}</div>')


def counter_chart(res, scale):
    tl = res["timeline"]
    top, h = 14, 110
    ymax = scale.count_max

    def y(v):
        return top + h - v / ymax * h
    parts = [axis(scale, top + h, h), y_axis(top, h, ymax, "count")]
    counter = [(scale.x(t), y(n)) for t, n in tl["counter"]]
    parts.append(polyline(counter, "#1f77b4", "counter", width=2))
    if tl["per_request"]:
        total, pts = 0, []
        for i, b in enumerate(tl["buckets"]):
            total += b.get("200", 0)
            pts.append((scale.x((i + 1) * tl["bucket_s"]), y(total)))
        parts.append(polyline(pts, "#3a9a4a", "oks", width=2))
    else:
        parts.append(f'<line class="oks" x1="{LEFT}" x2="{LEFT + W}" '
                     f'y1="{y(res["ok"]):.1f}" y2="{y(res["ok"]):.1f}" '
                     f'stroke="#3a9a4a" stroke-dasharray="4,3"/>')
    xe = LEFT + W + 4
    parts.append(f'<text x="{xe}" y="{y(res["ok"]) - 2:.1f}" '
                 f'fill="#3a9a4a" style="fill:#3a9a4a">200s {res["ok"]}'
                 f'</text>')
    parts.append(f'<text x="{xe}" y="{y(res["counter"]) + 10:.1f}" '
                 f'style="fill:#1f77b4">counter {res["counter"]}</text>')
    if res["lost"]:
        mid = (y(res["ok"]) + y(res["counter"])) / 2 + 3
        parts.append(f'<line x1="{LEFT + W}" x2="{LEFT + W}" '
                     f'y1="{y(res["ok"]):.1f}" y2="{y(res["counter"]):.1f}" '
                     f'stroke="#c62828" stroke-width="3"/>'
                     f'<text x="{xe}" y="{mid:.1f}" '
                     f'style="fill:#c62828" font-weight="700">lost '
                     f'{res["lost"]}</text>')
    what = ("the running total of 200s" if tl["per_request"]
            else "the load's total of 200s, at its end")
    return (f'<h3>the Redis counter (blue) against {what} (green)</h3>'
            + svg(LEFT + W + RIGHT, top + h + 16, "".join(parts), "counter"))


def header(res, i):
    p = res["params"]
    verdict = res["verdict"]
    title = res.get("title") or "rolling update"
    cells = "".join(f'<th>{FIGURE_NAMES[k]}</th>' for k in FIGURES)
    # Results of a harness without the figure (unknown) show 0.
    values = "".join(f'<td id="run{i}-{k}" data-value="{res.get(k, 0)}">'
                     f'{res.get(k, 0)}</td>' for k in FIGURES)
    rule = res.get("verdict_rule")
    redis = ", ".join(f"{kind} at {t:.2f} s" for t, kind, _ in
                      res.get("redis_events", []))
    params = "".join(f'<span>{esc(k)}={esc(v)}</span>'
                     for k, v in sorted(p.items()))
    problems = ("" if not res["problems"] else
                '<div class="problems">' + esc("; ".join(res["problems"]))
                + "</div>")
    failures = ", ".join(f"{k} {v}" for k, v in sorted(
        res["failures"].items()))
    return (f'<h2>{esc(title)} <span id="run{i}-verdict" '
            f'class="badge {verdict}" data-value="{verdict}">'
            f'{verdict.upper()}</span></h2>'
            f'<table class="verdict"><tr>{cells}</tr><tr>{values}</tr>'
            f'</table>'
            + (f'<div id="run{i}-rule" class="rule">PASS when '
               f'{esc(rule)}</div>' if rule else "")
            + (f'<div>Redis: {esc(redis)}</div>' if redis else "")
            + (f'<div>failed, as the client saw them: {esc(failures)}</div>'
               if failures else "")
            + problems + f'<div class="params">{params}</div>')


def render(results):
    scale = Scale(results)
    cols = []
    for i, res in enumerate(results):
        cols.append(f'<div class="run" data-run="{i}">' + header(res, i)
                    + outcome_chart(res, scale) + lanes(res, scale)
                    + pending_chart(res, scale) + counter_chart(res, scale)
                    + "</div>")
    title = ("gracefuld: rolling updates side by side" if len(results) > 1
             else "gracefuld: a rolling update")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{esc(title)}</title><style>{CSS}</style></head><body>'
            f'<h1>{esc(title)}</h1><p>Time in seconds after the load '
            'started. Hover for details.</p>'
            f'<div class="runs">{"".join(cols)}</div></body></html>\n')


def runs_of(result):
    """The results in a rollout.py JSON line: one, or --compare's runs."""
    return result["runs"] if "runs" in result else [result]


def main(argv=None):
    import argparse
    import json
    import os
    import sys
    ap = argparse.ArgumentParser(
        description="Renders rollout.py's JSON result as the HTML report, "
        "and optionally its screenshot in headless Chromium.")
    ap.add_argument("json", help="rollout.py --json FILE")
    ap.add_argument("--html", required=True, help="the report to write")
    ap.add_argument("--png", default=None,
                    help="also a screenshot of it (chromium, chromedriver)")
    ap.add_argument("--width", type=int, default=1540)
    ap.add_argument("--scale", type=float, default=0.7,
                    help="of the screenshot (default %(default)g)")
    a = ap.parse_args(argv)
    with open(a.json) as f:
        results = runs_of(json.loads(f.read().strip().splitlines()[-1]))
    with open(a.html, "w") as f:
        f.write(render(results))
    if a.png:
        # browser.py is beside this file; it uses the test library.
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(here)),
                                        "test", "lib"))
        sys.path.insert(0, here)
        import browser
        why = browser.missing()
        if why:
            print(f"report: no screenshot: {why}", file=sys.stderr)
            return 2
        with browser.Browser(width=a.width, height=900) as b:
            b.open("file://" + os.path.abspath(a.html))
            b.screenshot(a.png, a.scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
