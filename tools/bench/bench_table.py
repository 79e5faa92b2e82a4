"""The benchmark's report: its results as the Markdown table people read
(printed, written beside the JSON, and to docs/bench/latest.md after a full
run) and the profile as text. Used by bench.py, which measures."""

import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def table(res):
    rows = []

    def add(what, g, n="", ratio="", target=""):
        rows.append((what, g, n, ratio, target))

    def rounds(median, ratios):
        return (f"**{median:.2f}×** (rounds: " +
                ", ".join(f"{v:.2f}" for v in ratios) + ")")

    t = res.get("throughput")
    if t:
        for (w, label), (k, mode) in ((wl, km) for wl in (
                ("steady", "steady state, INCRs falling due"),
                ("http_only", "before the first INCR falls due"),
                ("pipelined", f"{t.get('pipeline')} requests to a write, "
                 "as TechEmpower's plaintext; after the steady window; "
                 "200s"))
                for km in (("gracefuld", ""), ("journal", "journal mode, "))):
            x = t.get(w)
            if x is None:
                continue  # a result from before the window was measured
            m = x["median"]
            if k not in m:
                continue  # a result from before journal mode was measured
            pre = "journal_" if k == "journal" else ""
            add(f"throughput, req/s ({mode}{label}; wrk -t1 -c{t['conns']}, "
                f"{x['seconds']:g} s, median of {len(t['rounds'])})",
                fmt(m[k]["rps"]), fmt(m["nginx"]["rps"]),
                rounds(x[pre + "ratio_median"], x[pre + "ratios"]),
                "≥ 0.9×" if k == "journal" else "≥ 1.1×")
            add(f"  CPU % server / wrk / redis-server ({mode}{w})",
                " / ".join(fmt(m[k][c]) for c in
                           ("server_cpu_pct", "client_cpu_pct",
                            "redis_cpu_pct")),
                " / ".join(fmt(m["nginx"][c]) for c in
                           ("server_cpu_pct", "client_cpu_pct",
                            "redis_cpu_pct")))
            g, n = (m[k]["server_cpu_us_per_req"],
                    m["nginx"]["server_cpu_us_per_req"])
            add(f"  server CPU per request ({mode}{w}), µs", fmt(g, 2),
                fmt(n, 2), f"{g / n:.2f}×" if n else "")
            if w == "pipelined":
                continue  # wrk times a pipelined request from its batch's
                # write, and its percentiles then read 0
            add(f"  latency at saturation ({mode}{w}, wrk) p50 / p99, µs",
                f"{fmt(m[k]['p50_us'])} / {fmt(m[k]['p99_us'])}",
                f"{fmt(m['nginx']['p50_us'])} / {fmt(m['nginx']['p99_us'])}")
    tl = res.get("tls")
    if tl:
        m = tl["median"]
        for mode in ("memory", "journal"):
            tcp, tls = m[mode + "-tcp"], m[mode + "-tls"]
            over = tl[mode + "_tls_over_tcp"]
            add(f"throughput over TLS to Redis, req/s ({mode} mode, steady; "
                f"TLS / plain TCP, same rounds)", fmt(tls["rps"]),
                fmt(tcp["rps"]), rounds(statistics.median(over), over),
                "≥ 0.95×")
            vs = tl[mode + "_tls_vs_nginx"]
            add(f"  over TLS against nginx ({mode} mode)", fmt(tls["rps"]),
                fmt(m["nginx"]["rps"]), rounds(statistics.median(vs), vs))
            add(f"  CPU % server / redis-server, TLS vs TCP ({mode} mode)",
                f"{fmt(tls['server_cpu_pct'])} / {fmt(tls['redis_cpu_pct'])}",
                f"{fmt(tcp['server_cpu_pct'])} / {fmt(tcp['redis_cpu_pct'])}")
            cpu = tl.get(mode + "_tls_cpu_over_tcp")
            if cpu:
                per = {k: 1e4 * m[mode + k]["server_cpu_pct"] /
                       m[mode + k]["rps"] for k in ("-tls", "-tcp")}
                add(f"  server CPU per request, µs, TLS vs TCP ({mode} mode, "
                    "same rounds)", fmt(per["-tls"], 2), fmt(per["-tcp"], 2),
                    rounds(statistics.median(cpu), cpu), "≤ 1.05×")
            ins = tl.get("instructions_per_request")
            if ins:
                n1, n2 = tl["requests_counted"]
                k = tl.get("requests_per_script", {}).get(mode + "-tls")
                add(f"  instructions per request, TLS vs TCP ({mode} mode; "
                    f"callgrind, libssl and libcrypto included, {n2:,} "
                    f"requests less {n1:,}; {k} requests per script)",
                    fmt(ins[mode + "-tls"]),
                    fmt(ins[mode + "-tcp"]),
                    f"**{tl[mode + '_tls_instructions_over_tcp']:.3f}×**",
                    "≤ 1.05×")
    if res.get("idle"):
        import idle  # beside this file
        rows.extend(idle.rows(res["idle"]))
    lt = res.get("latency")
    if lt:
        m = lt["median"]
        for q, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"),
                         ("p99_9", "p99.9")):
            ratio = (f"{m['gracefuld'][q] / m['nginx'][q]:.2f}×"
                     if m["nginx"][q] else "")
            if q == "p99":
                ratio = rounds(lt["p99_ratio_median"], lt["p99_ratios"])
            add(f"latency at {fmt(lt['rate'])} req/s constant, {label}, µs",
                fmt(m["gracefuld"][q]), fmt(m["nginx"][q]), ratio,
                "≤ 1.0×" if q == "p99" else "")
        for q, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"),
                         ("p99_9", "p99.9")):
            if "journal" not in m:
                break
            ratio = (f"{m['journal'][q] / m['gracefuld'][q]:.2f}× memory "
                     "mode's" if m["gracefuld"][q] else "")
            if q == "p99":
                ratio = rounds(lt["journal_p99_ratio_median"],
                               lt["journal_p99_ratios"]) + " memory mode's"
            add(f"latency at {fmt(lt['rate'])} req/s constant, journal mode, "
                f"{label}, µs", fmt(m["journal"][q]), fmt(m["nginx"][q]),
                ratio, "≤ 2.0× memory mode's" if q == "p99" else "")
    for phase in ("throughput", "latency"):
        x = res.get(phase)
        if x and all("steal_pct" in r for r in x["rounds"]):
            steals = [r["steal_pct"] for r in x["rounds"]]
            add(f"host CPU steal during the {phase} rounds, % of one CPU "
                "(hypervisor; high means noisy rounds)",
                f"{statistics.median(steals):.1f} (rounds: " +
                ", ".join(f"{v:.1f}" for v in steals) + ")")
    mem = res.get("memory")
    if mem:
        for name, label in (("full_speed", "full speed"),
                            ("constant_rate", "constant rate")):
            x = mem.get(name)
            if x:
                add(f"bytes per pending increment ({fmt(x['accepted'])} "
                    f"pending, {label}, {fmt(x['rate'])}/s)",
                    fmt(x["bytes_per_pending"], 2), "", "", "≤ 16")
        x = mem.get("full_speed")
        if x:
            add(f"RSS with {fmt(x['accepted'])} pending, kB",
                fmt(x["rss_after_kb"]), "", "",
                f"idle {fmt(x['rss_idle_kb'])} kB")
        for name, label in (("journal_full_speed", "full speed"),
                            ("journal_constant_rate", "constant rate")):
            x = mem.get(name)
            if x:
                add(f"journal mode: Redis used_memory per pending increment "
                    f"({fmt(x['journal_held'])} in the journal, {label}, "
                    f"{fmt(x['rate'])}/s), bytes",
                    fmt(x["bytes_per_pending"], 2), "",
                    f"journal hash alone: {fmt(x['journal_bytes_per_pending'], 2)}"
                    f" B per increment, {fmt(x['journal_entries'])} entries of "
                    f"{fmt(x['journal_bytes_per_entry'])} B "
                    f"({', '.join(x['journal_encoding'])})")
    d = res.get("drain")
    if d:
        m = d["median"]
        add("drain overhead: last INCR at Redis → process gone (external), µs",
            fmt(m["overhead_external_us"]), "", "", "< 10,000")
        add("drain overhead: last reply read → exit_group (perf trace), µs",
            fmt(m["overhead_trace_us"]), "", "", "< 10,000")
        add("exit after the last deadline, ms",
            fmt(m["exit_after_last_deadline_ms"], 2), "", "", "< 10")
        ok = all(r["rc"] == 0 and r["counted"] == r["accepted"]
                 for r in d["rounds"])
        add("drained rounds with counter = accepted, exit 0",
            f"{sum(1 for r in d['rounds'] if r['rc'] == 0 and r['counted'] == r['accepted'])}"
            f"/{len(d['rounds'])}", "", "", "all" if ok else "**FAIL**")
    s = res.get("startup")
    if s:
        add("start-up: exec → first 200 (/readyz; nginx /incr), ms",
            fmt(s["gracefuld"]["median_ms"], 2), fmt(s["nginx"]["median_ms"],
                                                    2))
    r = res.get("redis")
    for k, mode in (("gracefuld", "memory mode"), ("journal", "journal mode")):
        x = (r or {}).get(k)
        if not x:
            continue
        add(f"Redis commands per request, {mode} (INFO commandstats, those "
            f"scripts run included; {fmt(x['accepted'])} at {fmt(x['rate'])}"
            "/s)", fmt(x["commands_per_request"], 4), "", "", "≤ 0.05")
        add(f"  … of which sent by gracefuld ({mode}, MONITOR)",
            fmt(x["sent_per_request"], 4), "",
            f"{fmt(x['increments_per_batch'], 1)} increments per "
            + ("batch" if k == "gracefuld" else "journal write"))
        add(f"  Redis other commands during the run ({mode})",
            fmt(x["other_commands"]), "",
            ", ".join(f"{c} {v}" for c, v in sorted(x["other"].items())),
            "the handshake" + (", lease renewals and adoptions"
                               if k == "journal" else ""))
        add(f"  increments per Redis read ({mode})",
            fmt(x["increments_per_redis_read"], 1), "", "", "many")
    al = res.get("allocs")
    if al:
        p = al["per_request"]
        add("allocations per request: gracefuld's own code",
            fmt(p["gracefuld"]["allocations"], 4), "", "", "0")
        add("allocations per request: hiredis (per INCR)",
            fmt(p["hiredis"]["allocations"], 4))
        add("allocations per request: libuv + libc",
            fmt(p["libuv"]["allocations"] + p["libc"]["allocations"], 4))
    sc = res.get("syscalls")
    if sc and "gracefuld" in sc:
        g, n = sc["gracefuld"]["per_request"], sc["nginx"]["per_request"]
        add("syscalls per request at saturation (perf tracepoints)",
            fmt(g.get("all"), 2), fmt(n.get("all"), 2))
        for k in ("read", "write", "writev", "epoll_wait", "epoll_ctl",
                  "ioctl", "context-switches"):
            if g.get(k) or n.get(k):
                add(f"  … of which {k}", fmt(g.get(k, 0), 3),
                    fmt(n.get(k, 0), 3))
    lines = ["| measure | gracefuld | nginx `return 200` | ratio | target |",
             "|---|---:|---:|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# The table of the latest full run, committed: docs/performance.md and the
# README link to it, and nobody edits it by hand.
LATEST = os.path.join(ROOT, "docs", "bench", "latest.md")


def latest_md(results, text):
    """The text of docs/bench/latest.md: where the table was measured (the
    commit, the CPUs, nginx's version), then the table itself."""
    m = results["meta"]
    nginx = (m.get("nginx") or "nginx ?").rpartition("/")[2]
    where = (f"`scripts/bench` at {m['commit']}"
             f"{' (src modified)' if m['src_modified'] else ''}; "
             f"{m['cpus']} cores, {m['cpu_model']}, nginx {nginx}")
    return ("<!-- Written by scripts/bench (tools/bench/bench.py) after a "
            "full run; not edited by hand. -->\n\n" + where + ".\n\n" +
            text + "\n")


def write_latest(path, results, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(latest_md(results, text))


def profile_text(p):
    lines = []
    cg = p.get("callgrind")
    if cg:
        lines.append(f"callgrind: {cg['instructions_per_request']:,} "
                     "instructions per request (user space only)")
        for obj, ir in cg["by_object"].items():
            lines.append(f"  {ir:8,}  {obj}")
        lines.append("  top functions (self):")
        for f in cg["top_functions"][:20]:
            lines.append(f"  {f['ir']:8,}  {f['function']} [{f['object']}]")
    pf = p.get("perf")
    if pf:
        lines.append("perf record at saturation (cpu-clock), by object:")
        for x in pf["by_dso"][:10]:
            lines.append(f"  {x['pct']:6.2f}%  {x['name']}")
        lines.append("  top symbols:")
        for x in pf["top_symbols"][:25]:
            lines.append(f"  {x['pct']:6.2f}%  {x['name']}")
    return "\n".join(lines)
