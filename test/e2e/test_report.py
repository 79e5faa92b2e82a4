"""The HTML report (rollout.py --report, tools/experiment/report.py), opened in a
real headless Chromium: it loads with no console errors, shows one lane per
replica and one bar per 100 ms bucket, and the counts it shows are the JSON
result's. The run is a short --compare: the negative control (no delay, no
preStop, zero grace) beside the recommended configuration, with the
manifests' 1 s readiness probe period, so the replacements are staggered."""


import pytest

import browser
import report

# What the page tells the test, read through the DOM hooks report.py
# documents.
READ_PAGE = """
const runs = [];
for (const run of document.querySelectorAll('.run')) {
  const i = run.dataset.run;
  const fig = {};
  for (const k of ['sent', 'ok', 'failed', 'counter', 'lost', 'extra',
                   'verdict'])
    fig[k] = document.getElementById(`run${i}-${k}`).textContent.trim();
  const buckets = [...run.querySelectorAll('.bucket')].map(b => {
    const counts = {};
    for (const r of b.querySelectorAll('rect[data-outcome]'))
      counts[r.dataset.outcome] = Number(r.dataset.count);
    return {i: Number(b.dataset.bucket), counts};
  });
  const lanes = [...run.querySelectorAll('.lane')].map(l => ({
    replica: l.dataset.replica,
    kinds: [...l.querySelectorAll('.event')].map(e => e.dataset.kind),
    states: [...l.querySelectorAll('rect.state')].map(e => e.dataset.state),
    text: l.textContent,
    height: l.getBoundingClientRect().height,
  }));
  runs.push({fig, buckets, lanes,
             pending: run.querySelectorAll('g.pending').length});
}
return {runs, scripts: document.scripts.length,
        external: [...document.querySelectorAll('[src],[href]')].length};
"""


@pytest.fixture(scope="module")
def chromium():
    why = browser.missing()
    if why:
        pytest.skip(why)


def test_compare_report_in_headless_chromium(experiment, tmp_path, chromium):
    page = tmp_path / "report.html"
    run = experiment("--compare", "--requests", 200, "--rate", 25,
                     "--workers", 5, "--first-rollout", 3,
                     "--incr-delay-ms", 1000, "--endpoint-lag", 1,
                     "--shutdown-delay-ms", 2000, "--report", page)
    assert run.returncode == 0, run.result
    control, recommended = run["runs"]
    assert control["verdict"] == "fail" and recommended["verdict"] == "pass"
    assert control["lost"] > 0 and control["failed"] > 0

    # The probe period staggers the replacements as in a cluster: each new
    # replica is ready at a probe a period after its start, and the next old
    # one is deleted only then.
    new = [r for r in recommended["replicas"] if r["role"] != "initial"]
    assert len(new) == 3
    for r in new:
        assert r["ready"] - r["started"] >= 0.9, r
    deleted = sorted(r["deleted"] for r in recommended["replicas"]
                     if r["deleted"] is not None)
    assert all(b - a >= 0.9 for a, b in zip(deleted, deleted[1:])), deleted

    with browser.Browser(str(tmp_path)) as b:
        b.open(page.as_uri())
        seen = b.script(READ_PAGE)
        console = b.console()
        png = b.screenshot(str(tmp_path / "report.png"), 0.7)
        # The console check sees errors when there are some.
        bad = tmp_path / "bad.html"
        bad.write_text("<script>console.error('on purpose')</script>")
        b.open(bad.as_uri())
        assert any("on purpose" in m["message"] for m in b.console())

    assert [m for m in console if m["level"] in ("SEVERE", "WARNING")] == []
    assert seen["scripts"] == 0 and seen["external"] == 0
    assert png.startswith(b"\x89PNG") and len(png) > 10000
    assert (tmp_path / "report.png").exists()

    assert len(seen["runs"]) == 2
    for res, shown in zip(run["runs"], seen["runs"]):
        for k in ("sent", "ok", "failed", "counter", "lost", "extra"):
            assert shown["fig"][k] == str(res[k]), k
        assert shown["fig"]["verdict"] == res["verdict"].upper()
        # One lane per replica, each drawn.
        assert sorted(lane["replica"] for lane in shown["lanes"]) == \
            sorted(r["name"] for r in res["replicas"])
        assert all(lane["height"] > 0 for lane in shown["lanes"])
        assert shown["pending"] == len(res["replicas"])
        # One bar per 100 ms bucket, holding the JSON's counts, which are
        # hey's (keep-alive off: one connection per request).
        tl = res["timeline"]
        assert [x["i"] for x in shown["buckets"]] == \
            list(range(len(tl["buckets"])))
        assert [x["counts"] for x in shown["buckets"]] == tl["buckets"]
        total = {}
        for x in shown["buckets"]:
            for o, n in x["counts"].items():
                total[o] = total.get(o, 0) + n
        assert total.get("200", 0) == res["ok"]
        assert sum(total.values()) == res["sent"]
        assert sum(n for o, n in total.items() if o != "200") == \
            res["failed"]

    lanes = {lane["replica"]: lane for lane in seen["runs"][0]["lanes"]}
    for r in control["replicas"]:
        kinds = lanes[r["name"]]["kinds"]
        if r["deleted"] is not None:
            # Zero grace: the old replicas died of a SIGKILL, drawn as such.
            assert r["status"] == "SIGKILL"
            assert "sigkill" in kinds and "SIGKILL" in lanes[r["name"]]["text"]
        else:
            assert "sigkill" not in kinds
    lanes = {lane["replica"]: lane for lane in seen["runs"][1]["lanes"]}
    for r in recommended["replicas"]:
        lane = lanes[r["name"]]
        assert "sigterm" in lane["kinds"] and "exit" in lane["kinds"]
        assert "sigkill" not in lane["kinds"]
        # The phases it logged: the delay, then its drain.
        assert "delaying" in lane["states"], lane


def synthetic():
    """A result as rollout.py writes it, small."""
    return {
        "title": "t", "verdict": "fail", "problems": ["1 increments lost"],
        "sent": 3, "ok": 3, "failed": 0, "failures": {}, "counter": 2,
        "lost": 1, "extra": 0, "params": {"requests": 3},
        "replicas": [{"name": "r1", "role": "initial"},
                     {"name": "r2", "role": "rollout 1"}],
        "timeline": {
            "bucket_s": 0.1, "outcomes": ["200", "refused"],
            "per_request": True, "buckets": [{"200": 2}, {}, {"200": 1}],
            "lifecycle": [[0, "r1", "started", ""], [0, "r1", "ready", ""],
                          [0.1, "r2", "started", ""],
                          [0.15, "r1", "deleted", ""],
                          [0.15, "r1", "sigkill", "no grace period"],
                          [0.15, "r1", "exit", "SIGKILL"],
                          [0.2, "r2", "crash", "a kind of the future"],
                          [0.25, "r2", "phase", "draining"]],
            "pending": {"r1": [[0.05, 2]], "r2": []},
            "counter": [[0.3, 2]]},
    }


def test_report_is_one_self_contained_page():
    page = report.render([synthetic()])
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "src=" not in page and "href=" not in page
    assert page.count('class="lane"') == 2
    assert page.count('class="bucket"') == 3
    assert 'data-kind="sigkill"' in page and "SIGKILL</text>" in page
    # A lifecycle kind the report does not know is drawn, not dropped.
    assert 'data-kind="crash"' in page
    assert 'id="run0-lost" data-value="1"' in page
    assert 'data-state="draining"' in page
