"""The documentation site builds strictly, and nothing a user reads points outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What a user reads: the code with its docstrings, the README, the changelog and the docs.
READ_BY_USERS = ("medimg", "pipelines", "saliency", "uncertainty", "continual", "docs", "deploy")
OUTSIDE = re.compile(
    r"\.\./shared|shared/specs|\bspecs? *(§|section|Q\d|\d|``\w+\.md)|\(spec(:|\s\w)|the spec\b|spec's"
)


def _user_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml"]
    for folder in READ_BY_USERS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".toml", ".yaml", ".yml"}]
    return files


def test_nothing_a_user_reads_points_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _user_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_the_outside_pattern_catches_what_it_should() -> None:
    assert OUTSIDE.search("see ../shared/specs/qubrats.md")
    assert OUTSIDE.search("as spec §2.2 step 6 says")
    assert OUTSIDE.search("the chain (spec ``saliency.md`` section 1.4)")
    assert OUTSIDE.search("a subset (spec: M >= 1,000)") and OUTSIDE.search("the spec's decode matrix")
    for code in ("for spec in prefer:", "isinstance(spec, Mapping)", "spec: ArmSpec,", "in specs:", "(spec.name)"):
        assert not OUTSIDE.search(code), code
    assert not OUTSIDE.search("shared weights + the site's own BN")


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed in this environment (the `docs` extra; `make test` installs it)")
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "commands" / "run" / "index.html").is_file()
    page = (tmp_path / "site" / "commands" / "federated" / "index.html").read_text(encoding="utf-8")
    assert "--leave-one-out" in page  # the options come from the command itself


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed in this environment (the `docs` extra; `make test` installs it)")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# x\n\n[gone](missing.md)\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\nstrict: true\n")
    done = subprocess.run([mkdocs, "build", "--strict"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    assert "missing.md" in done.stdout + done.stderr
