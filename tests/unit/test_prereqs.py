"""scripts/prereqs and devstack/prereqs.py: what a bare machine lacks, and whether it is
installed (as root, with sudo -n) or the command to run is printed. The decisions are
tested on injected facts; the script itself only where it installs nothing."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from devstack import prereqs
from devstack.prereqs import Facts, Need, Privilege

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prereqs"

EVERYTHING = Facts(
    python=(3, 11),
    python_wanted=((3, 11), (3, 14)),
    venv_module=True,
    venv_exists=True,
    java=17,
    mvn=True,
    kafka_jars_cached=True,
    postgres_server=True,
    make=True,
    env={},
)
# A fresh Debian: python3 without its venv module, no JDK, no Maven, no PostgreSQL.
BARE = replace(
    EVERYTHING,
    venv_module=False,
    venv_exists=False,
    java=None,
    mvn=False,
    kafka_jars_cached=False,
    postgres_server=False,
)
ROOT_USER = Privilege(root=True, sudo=False, has_sudo=False, apt=True, may_install=True)
SUDOER = Privilege(root=False, sudo=True, has_sudo=True, apt=True, may_install=True)
USER = Privilege(root=False, sudo=False, has_sudo=True, apt=True, may_install=True)


def names(needs: list[Need]) -> list[str]:
    return [need.what for need in needs]


# ─── what is missing ──────────────────────────────────────────────────────────────────


def test_a_bare_machine_misses_the_venv_module_java_maven_and_postgres() -> None:
    needs = prereqs.missing(BARE, "test")
    assert prereqs.packages(needs, known=["openjdk-17-jre-headless", "maven"]) == [
        "python3.11-venv",
        "openjdk-17-jre-headless",
        "maven",
        "postgresql",
    ]


def test_nothing_is_missing_on_a_set_up_machine() -> None:
    for scope in prereqs.SCOPES:
        assert prereqs.missing(EVERYTHING, scope) == []


def test_creating_the_venv_needs_only_python() -> None:
    assert names(prereqs.missing(BARE, "venv")) == ["Python's venv module (python3.11)"]
    assert prereqs.missing(replace(BARE, venv_exists=True), "venv") == []


def test_make_up_against_existing_servers_needs_no_java_nor_postgres() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "DATABASE_URL": "postgresql://db/x"}
    facts = replace(BARE, venv_exists=True, env=env)
    assert prereqs.missing(facts, "stack") == []
    # The tests start the local `test` instance whatever the environment says.
    assert len(prereqs.missing(facts, "test")) == 3


def test_maven_is_needed_only_until_kafkas_jars_are_cached() -> None:
    facts = replace(EVERYTHING, mvn=False, kafka_jars_cached=False)
    assert names(prereqs.missing(facts, "stack")) == ["Maven (mvn), to fetch Kafka's jars once"]
    assert prereqs.missing(replace(facts, kafka_jars_cached=True), "stack") == []


def test_a_java_older_than_17_counts_as_missing() -> None:
    assert names(prereqs.missing(replace(EVERYTHING, java=11), "stack")) == [
        "Java 17+ (java on PATH is 11)"
    ]
    assert prereqs.missing(replace(EVERYTHING, java=21), "stack") == []


def test_a_python_out_of_range_cannot_be_installed_only_explained() -> None:
    for python in ((3, 10), (3, 14)):
        (need,) = prereqs.missing(replace(EVERYTHING, python=python), "venv")
        assert need.packages == ()
        assert "PYTHON=python3.11" in need.hint


def test_make_itself_is_checked_for_ci() -> None:
    (need,) = prereqs.missing(replace(EVERYTHING, make=False), "test")
    assert need.packages == ("make",)


# ─── what to do about it ──────────────────────────────────────────────────────────────


def test_root_installs_with_apt_get_directly() -> None:
    plan = prereqs.decide(prereqs.missing(BARE, "test"), ROOT_USER)
    assert (plan.action, plan.prefix, len(plan.needs)) == ("install", (), 4)


def test_a_user_with_passwordless_sudo_installs_with_sudo_n() -> None:
    plan = prereqs.decide(prereqs.missing(BARE, "test"), SUDOER)
    assert (plan.action, plan.prefix) == ("install", ("sudo", "-n"))


def test_anyone_else_is_told_the_one_command() -> None:
    plan = prereqs.decide(prereqs.missing(BARE, "test"), USER)
    assert plan.action == "advise"
    lines = prereqs.advice(plan, ["python3.11-venv", "openjdk-17-jre-headless", "maven",
                                  "postgresql"], apt=True)  # fmt: skip
    assert lines == [
        "missing: Python's venv module (python3.11); Java 17+; "
        "Maven (mvn), to fetch Kafka's jars once; PostgreSQL's server (initdb, pg_ctl)",
        "run: sudo apt-get install -y --no-install-recommends python3.11-venv "
        "openjdk-17-jre-headless maven postgresql",
    ]


def test_apt_get_update_comes_first_when_apt_does_not_know_a_package_yet() -> None:
    plan = prereqs.decide(prereqs.missing(replace(EVERYTHING, postgres_server=False), "test"), USER)
    (line,) = prereqs.advice(plan, [], apt=True)[1:]
    assert line == (
        "run: sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql"
    )


def test_without_sudo_the_command_is_run_as_root_with_su() -> None:
    plan = prereqs.decide(prereqs.missing(BARE, "stack"), replace(USER, has_sudo=False))
    assert prereqs.advice(plan, [], apt=True)[-1] == (
        "run: su -c 'apt-get update && apt-get install -y --no-install-recommends "
        "python3.11-venv openjdk-17-jre-headless maven postgresql'"
    )


def test_no_install_means_advice_even_for_root_and_without_sudo() -> None:
    plan = prereqs.decide(prereqs.missing(BARE, "stack"), replace(ROOT_USER, may_install=False))
    assert plan.action == "advise"
    assert prereqs.advice(plan, ["maven"], apt=True)[-1].startswith("run: apt-get update && apt")


def test_without_apt_get_it_names_what_is_missing_and_installs_nothing() -> None:
    plan = prereqs.decide(prereqs.missing(BARE, "stack"), replace(ROOT_USER, apt=False))
    assert plan.action == "advise"
    lines = prereqs.advice(plan, [], apt=False)
    assert lines[-1] == "install them with the system's package manager"
    assert not any("apt-get" in line for line in lines)


def test_a_need_apt_cannot_meet_is_never_half_installed() -> None:
    facts = replace(BARE, python=(3, 10))
    plan = prereqs.decide(prereqs.missing(facts, "test"), ROOT_USER)
    assert plan.action == "advise"
    lines = prereqs.advice(plan, [], apt=True)
    assert "make PYTHON=python3.11 demo" in lines[1]
    assert not any(line.startswith("run:") for line in lines)


def test_the_jdk_is_the_first_one_this_release_ships() -> None:
    java = [need for need in prereqs.missing(BARE, "stack") if need.what.startswith("Java")]
    assert prereqs.packages(java, known=["openjdk-21-jre-headless"]) == ["openjdk-21-jre-headless"]
    assert prereqs.packages(java, known=[]) == ["openjdk-17-jre-headless"]


# ─── facts read from this machine ─────────────────────────────────────────────────────


@pytest.mark.parametrize(("line", "major"), [('JAVA_VERSION="21.0.2"', 21),
                                             ('JAVA_VERSION="1.8.0_392"', 8)])  # fmt: skip
def test_java_major_from_the_release_file(tmp_path: Path, line: str, major: int) -> None:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("")
    (tmp_path / "jdk" / "release").write_text(f'IMPLEMENTOR="Debian"\n{line}\n')
    assert prereqs.java_major(str(java)) == major


def test_java_major_from_java_version_without_a_release_file(tmp_path: Path) -> None:
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.21\" 2023-10-17' >&2\n")
    java.chmod(0o755)
    assert prereqs.java_major(str(java)) == 11
    assert prereqs.java_major(None) is None


def test_python_range_is_pyprojects_requires_python() -> None:
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low, high = prereqs.python_range()
    assert wanted == f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"


def test_the_kafka_cache_is_devstacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from devstack import kafka

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert prereqs.kafka_cache(os.environ) == kafka.cache_dir()


def test_it_runs_on_a_bare_python() -> None:
    """No third-party import and no syntax newer than 3.8: it runs before the venv."""
    source = (ROOT / "devstack" / "prereqs.py").read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}  # fmt: skip
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}  # fmt: skip
    assert imported - {"__future__"} <= sys.stdlib_module_names


# ─── the script, where it installs nothing ────────────────────────────────────────────


def run_script(*args: str, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), *args],
        env={"PATH": path, "HOME": env.pop("HOME", "/nonexistent"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_python_it_says_so_and_what_to_run(tmp_path: Path) -> None:
    done = run_script("test", path=os.environ["PATH"], PYTHON=str(tmp_path / "python3"))
    assert done.returncode == 1
    assert "missing: " + str(tmp_path / "python3") in done.stderr
    assert "apt-get install -y --no-install-recommends python3 python3-venv" in done.stderr


def test_on_a_machine_without_java_maven_and_apt_it_names_them(tmp_path: Path) -> None:
    """Only python3 and dirname on PATH: no java, no mvn, no apt-get to install with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "dirname").symlink_to(_which("dirname"))
    done = run_script("stack", path=str(bin_dir), XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert done.returncode == 1, done.stderr
    assert "Java 17+; Maven (mvn), to fetch Kafka's jars once" in done.stderr
    assert "install them with the system's package manager" in done.stderr


def test_a_set_up_machine_passes_silently() -> None:
    done = run_script(
        "venv", path=os.environ["PATH"], HOME=str(Path.home()), COINSTREAM_NO_INSTALL="1"
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_an_unknown_scope_is_refused() -> None:
    assert prereqs.main(["everything"]) == 2


def _which(command: str) -> str:
    for folder in os.environ["PATH"].split(os.pathsep):
        if os.access(candidate := os.path.join(folder, command), os.X_OK):
            return candidate
    raise AssertionError(f"{command} not on PATH")
