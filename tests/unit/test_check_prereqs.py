"""Unit tests for tools/check_prereqs.sh, the one check of what setup and the tests need.

The script runs under bash with a PATH holding only a temporary directory, so "installed"
means a fake executable there; `id` and `apt-get` are fakes too, so nothing is installed and
no network is used. The Makefile's test targets must run the check before pytest.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "check_prereqs.sh"
BASH = shutil.which("bash") or "/bin/bash"
VENV = Path(sys.prefix)  # the venv running these tests: it has pytest and the kestrel packages
FAKE_APT_GET = """#!{python}
import os, sys
from pathlib import Path
here = Path(sys.argv[0]).resolve().parent
with open(here.parent / "apt-get.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
for arg in sys.argv[1:]:
    if not arg.startswith("-") and arg not in {{"update", "install"}}:
        (here / arg).write_text("#!/bin/sh\\n")
        os.chmod(here / arg, 0o755)
"""


@dataclass
class Machine:
    """A PATH of one directory with chosen commands in it, and whether `id -u` says root."""

    bin: Path

    def add(self, name: str, text: str = "#!/bin/sh\n") -> Path:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    def as_user(self, uid: int) -> None:
        self.add("id", f"#!/bin/sh\necho {uid}\n")

    def apt_log(self) -> list[str]:
        log = self.bin.parent / "apt-get.log"
        return log.read_text().splitlines() if log.exists() else []

    def check(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": str(self.bin), "KESTREL_PREREQ_DIRS": "", "HOME": str(self.bin), **env}
        return subprocess.run(
            [BASH, str(SCRIPT), "--venv", str(VENV), *args],
            capture_output=True, text=True, env=environ, timeout=30, cwd=REPO,
        )  # fmt: skip


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    (tmp_path / "bin").mkdir()
    found = Machine(tmp_path / "bin")
    found.as_user(1000)
    return found


def test_check_prereqs_names_the_install_command_of_every_missing_package(
    machine: Machine,
) -> None:
    done = machine.check("--for", "make test", "redis-server", "chromium", "venv")
    assert done.returncode == 1
    assert "make test needs redis-server chromium" in done.stderr
    assert "sudo apt-get update && sudo apt-get install -y redis-server chromium" in done.stderr
    assert "venv" not in done.stderr  # the venv is there: only what is missing is named
    assert done.stdout == ""


def test_check_prereqs_names_only_the_missing_one(machine: Machine) -> None:
    machine.add("redis-server")
    done = machine.check("redis-server", "chromium")
    assert done.returncode == 1
    assert "apt-get install -y chromium\n" in done.stderr and "redis" not in done.stderr


def test_check_prereqs_as_root_without_install_names_apt_get_without_sudo(
    machine: Machine,
) -> None:
    machine.as_user(0)
    machine.add("apt-get", FAKE_APT_GET.format(python=sys.executable))
    done = machine.check("chromium")
    assert done.returncode == 1
    assert "  apt-get update && apt-get install -y chromium\n" in done.stderr
    assert machine.apt_log() == []  # a check installs nothing


def test_check_prereqs_passes_silently_when_everything_is_there(machine: Machine) -> None:
    machine.add("redis-server")
    machine.add("chromium")
    done = machine.check("redis-server", "chromium", "venv")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_check_prereqs_looks_in_the_extra_dirs_beside_path(
    machine: Machine, tmp_path: Path
) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    Machine(sbin).add("redis-server")
    assert machine.check("redis-server", KESTREL_PREREQ_DIRS=str(sbin)).returncode == 0
    assert machine.check("redis-server").returncode == 1


def _browser_harness_names() -> tuple[str, ...]:
    """CHROMIUM_NAMES of tests/integration/browser_harness.py (read, not imported)."""
    tree = ast.parse((REPO / "tests" / "integration" / "browser_harness.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "CHROMIUM_NAMES":
            names: tuple[str, ...] = ast.literal_eval(node.value)
            return names
    raise AssertionError("browser_harness.py has no CHROMIUM_NAMES")


@pytest.mark.parametrize("name", _browser_harness_names())
def test_check_prereqs_finds_chromium_under_every_name_the_e2e_harness_runs(
    machine: Machine, name: str
) -> None:
    machine.add(name)
    assert machine.check("chromium").returncode == 0


def test_check_prereqs_takes_kestrel_chromium_when_set(machine: Machine, tmp_path: Path) -> None:
    machine.add("chromium")
    done = machine.check("chromium", KESTREL_CHROMIUM=str(tmp_path / "no-chrome"))
    assert done.returncode == 1 and "no-chrome is not an executable" in done.stderr
    chrome = Machine(tmp_path).add("my-chrome")
    assert machine.check("chromium", KESTREL_CHROMIUM=str(chrome)).returncode == 0


def test_check_prereqs_install_as_root_apt_gets_only_the_missing_packages(
    machine: Machine,
) -> None:
    machine.as_user(0)
    machine.add("apt-get", FAKE_APT_GET.format(python=sys.executable))
    machine.add("redis-server")
    done = machine.check("--install", "redis-server", "chromium")
    assert done.returncode == 0, done.stderr
    assert machine.apt_log() == ["update -qq", "install -y -qq chromium"]
    assert done.stdout == "installing chromium with apt-get\n"
    # Once installed, the same command is a silent no-op.
    again = machine.check("--install", "redis-server", "chromium")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert len(machine.apt_log()) == 2


def test_check_prereqs_install_without_root_stops_with_the_sudo_command(
    machine: Machine,
) -> None:
    machine.add("apt-get", FAKE_APT_GET.format(python=sys.executable))
    done = machine.check("--install", "--for", "make setup", "redis-server", "chromium")
    assert done.returncode == 1
    assert machine.apt_log() == []
    assert "make setup needs redis-server chromium" in done.stderr
    assert "sudo apt-get install -y redis-server chromium" in done.stderr


def test_check_prereqs_reports_a_missing_venv_with_the_command_that_makes_it(
    machine: Machine, tmp_path: Path
) -> None:
    done = machine.check("--venv", str(tmp_path / "no-venv"), "venv")
    assert done.returncode == 1
    assert "rm -f .stamps/setup && make setup" in done.stderr


def test_check_prereqs_rejects_an_unknown_prerequisite(machine: Machine) -> None:
    done = machine.check("docker")
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.parametrize(
    ("target", "needs"),
    [("test", "redis-server chromium venv"), ("test-e2e", "redis-server chromium venv"),
     ("test-integration", "redis-server venv"), ("test-unit", "venv")],
)  # fmt: skip
def test_makefile_test_targets_check_their_prerequisites_before_pytest(
    target: str, needs: str
) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed", pytrace=False)
    # -o: the setup stamp counts as up to date, so only the target's own recipe is printed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(
        [make, "--no-print-directory", "-n", "-o", ".stamps/setup", target],
        capture_output=True, text=True, cwd=REPO, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first == f'tools/check_prereqs.sh --venv .venv --for "make {target}" {needs}'
    assert "pytest" in done.stdout.split(first, 1)[1]


def test_makefile_setup_installs_the_system_prerequisites_first() -> None:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "SYSTEM_PREREQS := redis-server chromium\n" in text
    stamp = text.split("\n$(SETUP_STAMP):", 1)[1]
    recipe = stamp.split("\n\n", 1)[0].splitlines()[1:]
    assert recipe[0] == '\t@$(CHECK_PREREQS) --for "make setup" --install $(SYSTEM_PREREQS)'
    assert "tools/check_prereqs.sh" in stamp.splitlines()[0]  # a new prerequisite reruns setup
