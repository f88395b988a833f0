"""The README's test command is the one CI runs, deterministic by default, and nothing a user
reads points outside the clone."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("Run the tests"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln for ln in block.splitlines() if "pytest" in ln]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, ln in enumerate(ci) if "the test command from README.md" in ln)
    ci_cmd = next(ln for ln in ci[marker + 1:] if ln.strip()).strip()
    assert ci_cmd == _readme_test_command()
    assert "-rs" in ci_cmd.split(), "skip reasons must be printed"


@pytest.mark.skipif("HYPOTHESIS_PROFILE" in os.environ, reason="a profile was chosen explicitly")
def test_hypothesis_is_derandomised_by_default():
    from hypothesis import settings
    assert settings.default.derandomize is True


def test_no_user_visible_path_outside_the_clone():
    from tests.helpers import NO_MNIST_REASON

    texts = {"NO_MNIST_REASON": NO_MNIST_REASON}
    for rel in ("README.md", "experiments/README.md", *sorted(
            str(f.relative_to(ROOT)) for f in (ROOT / "docs").glob("*.md"))):
        texts[rel] = (ROOT / rel).read_text()
    for name, text in texts.items():
        assert "../shared" not in text and "shared/data" not in text, name


def test_readme_is_short_and_its_links_resolve():
    """README is read in minutes (at most 300 lines); measurements live in docs/, and every
    relative link of README and docs/ names a file that exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name}: broken link {link}"
