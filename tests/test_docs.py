"""The documentation site builds in strict mode: a broken link or anchor, a page left out of the
navigation or an API object that does not exist fails the build, and so this test. The README's
and CONTRIBUTING.md's links into the repository and the site resolve too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = "the documentation tools are not installed (pip install -e '.[dev]')"
for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
    pytest.importorskip(module, reason=SKIP)


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``, from the repository root (where the
    snippets' paths start)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def relative_links(markdown: str) -> list[str]:
    """The targets of the markdown links and images that are neither web addresses nor same-page anchors."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_the_site_builds_strictly_and_the_front_pages_links_resolve(tmp_path):
    site = tmp_path / "site"
    done = build(REPO / "mkdocs.yml", site)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the API reference was generated from the docstrings, and the default run's printed summary
    # (one source: the README's block) reached the quick start page
    assert 'id="mia_torch.report.types.RunResults"' in (site / "api" / "types" / "index.html").read_text()
    printed = (REPO / "README.md").read_text().split("[start:default-run] -->\n```\n", 1)[1].split("```", 1)[0]
    assert printed.splitlines()[0] in (site / "quickstart" / "index.html").read_text()
    for front in ("README.md", "CONTRIBUTING.md"):
        links = relative_links((REPO / front).read_text())
        assert links, front
        for link in links:
            path, _, anchor = link.partition("#")
            assert (REPO / path).exists(), f"{front} links to {link}, which does not exist"
            if anchor:
                assert path.startswith("docs/") and path.endswith(".md"), f"{front}: anchor outside the site: {link}"
                page = Path(path.removeprefix("docs/")).with_suffix("")
                html = site / (page.parent if page.name == "index" else page) / "index.html"
                assert f'id="{anchor}"' in html.read_text(), f"{front} links to {link}: no such anchor"


@pytest.mark.parametrize("page, messages", [
    ("[a page](no_such_page.md) and [an anchor](#no-such-anchor)", ["no_such_page.md", "no-such-anchor"]),
    ("::: mia_torch.attacks.NoSuchAttack", ["mia_torch.attacks.NoSuchAttack could not be found"]),
])
def test_a_broken_link_anchor_or_api_object_fails_the_build(tmp_path, page, messages):
    """The site's own settings (inherited) turn each of these into a failed build that names it."""
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "index.md").write_text(f"# Home\n\n## Part\n\n{page}\n")
    (tmp_path / "mkdocs.yml").write_text(f"INHERIT: {REPO / 'mkdocs.yml'}\ndocs_dir: pages\nnav:\n  - index.md\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    for message in messages:
        assert message in done.stderr, done.stderr[-3000:]
