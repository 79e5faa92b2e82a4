"""The shell scripts people run (scripts/, .ci/run, the test helpers and
tools/experiment/k8s-experiment.sh, which no cluster here can run) are
shellcheck-clean."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def shell_scripts():
    candidates = [*ROOT.joinpath("scripts").iterdir(), ROOT / ".ci" / "run",
                  *ROOT.joinpath("test").rglob("*.sh"),
                  *ROOT.joinpath("tools").rglob("*.sh")]
    return sorted(p for p in candidates
                  if p.is_file() and p.read_bytes().startswith(b"#!")
                  and b"sh\n" in p.read_bytes().split(b"\n", 1)[0] + b"\n")


def test_every_script_is_found():
    names = {str(p.relative_to(ROOT)) for p in shell_scripts()}
    for expected in ("scripts/run", "scripts/test", "scripts/bootstrap",
                     ".ci/run", "tools/experiment/k8s-experiment.sh"):
        assert expected in names


@pytest.mark.parametrize("script", shell_scripts(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_clean(script):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (scripts/bootstrap test does)")
    r = subprocess.run(["shellcheck", "-x", str(script)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
