"""Capability markers (tests/capabilities.py): a missing capability is a skip that says what
to install, and under CI=true a failure; a present one lets the test run."""

from __future__ import annotations

import pytest

from tests import capabilities

INNER = """
import pytest

@pytest.mark.fuse
def test_needs_fuse():
    pass

@pytest.mark.root
@pytest.mark.docker
def test_needs_root_and_docker():
    pass

def test_needs_nothing():
    pass
"""


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """A pretend machine: capability -> what is missing (None: present)."""
    found: dict[str, str | None] = {"fuse": "fusermount3: apt-get install fuse3",
                                    "root": None, "docker": None}
    for name in capabilities.CHECKS:
        monkeypatch.setitem(capabilities.CHECKS, name, lambda name=name: found[name])
    return found


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nmarkers =\n    fuse: x\n    root: x\n    docker: x\n")
    return pytester.runpytest_inprocess("-p", "tests.capabilities", "-rs", *args)


def test_missing_capability_skips_naming_what_to_install(
        pytester: pytest.Pytester, machine: dict[str, str | None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = _run(pytester)
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*needs fuse: fusermount3: apt-get install fuse3*"])


def test_under_ci_a_missing_capability_fails(pytester: pytest.Pytester,
                                             machine: dict[str, str | None],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = _run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*needs fuse*CI=true: a missing capability fails*"])
    assert result.ret != 0


def test_every_missing_capability_is_reported(pytester: pytest.Pytester,
                                              machine: dict[str, str | None],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    machine.update(fuse=None, root="uid 0: run it as root")
    result = _run(pytester)
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*needs root: uid 0: run it as root*"])


def test_a_unit_test_may_not_need_a_capability(pytester: pytest.Pytester,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "UNIT_DIR", pytester.path)
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*is marked fuse*the unit layer runs without*"])


def test_the_real_checks_answer_on_this_machine() -> None:
    for name, check in capabilities.CHECKS.items():
        answer = check()
        assert answer is None or (isinstance(answer, str) and answer), name
