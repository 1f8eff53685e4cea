"""
The documentation stays true to the repository: the configuration
reference is the generated one, every relative link and #anchor in the
README and docs/ resolves, every repository file the docs and etc/ name
exists, and every popgate module, class and interface the docs name (all
of them in docs/architecture.md) can be imported.
"""

from __future__ import annotations

import builtins
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from popgate import settings
from tests.popgate_server import REPO

ROOT = Path(REPO)
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *DOCS]
ETC = sorted(p for p in (ROOT / "etc").rglob("*") if p.is_file())
REGENERATE = ".venv/bin/python -m popgate.settings --markdown > docs/configuration.md"

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
# A path inside the repository, as the docs write one: not the tail of an
# absolute path (/etc/popgate/users) or of a longer word.
_REPO_PATH = re.compile(r"(?<![\w/.~-])((?:etc|popgate|bench|tests|docs|\.ci)/[\w./-]*)")
# Generated output (git-ignored), described by its layout, never present in a checkout.
_GENERATED = ("bench/results/",)
_DOTTED = re.compile(r"(?<![\w/.-])((?:popgate|twisted)(?:\.\w+)+)")
_FILE_SUFFIXES = {"toml", "service", "socket", "conf", "md", "py", "example", "lock", "log",
                  "json", "pem", "db", "txt"}
_CAMEL = re.compile(r"(?<![\w.])([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)((?:\.\w+)*)")
# Where a bare class or interface name in docs/architecture.md may come
# from, besides the popgate modules the page names.
_TWISTED = ("twisted.cred.portal", "twisted.cred.checkers", "twisted.cred.credentials",
            "twisted.cred.strcred", "twisted.cred.error", "twisted.mail.pop3",
            "twisted.internet.interfaces", "twisted.internet.defer", "twisted.plugin",
            "twisted.application.service", "twisted.application.internet",
            "twisted.protocols.basic", "twisted.protocols.tls")


def prose(text: str) -> str:
    """The text with fenced code blocks blanked out (line numbers kept)."""
    return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def inline_code(text: str) -> list[str]:
    """The inline code spans of the prose."""
    return [m.group(2) for m in _INLINE.finditer(prose(text))]


def fenced_code(text: str) -> list[str]:
    return [m.group(0) for m in _FENCE.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation
    dropped (letters, digits, _ and - kept), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, duplicates numbered as
    GitHub numbers them."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(prose(path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problem(page: Path, target: str) -> str | None:
    """Why C{target}, linked from C{page}, does not resolve (or None)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return None
    where, _, anchor = target.partition("#")
    path = (page.parent / where).resolve() if where else page
    if not path.exists():
        return f"{target}: no file {path}"
    if ROOT.resolve() not in path.parents and path != ROOT.resolve():
        return f"{target}: outside the repository"
    if anchor:
        if path.suffix != ".md":
            return f"{target}: an anchor into a file that is not markdown"
        if anchor not in anchors(path):
            return f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}"
    return None


def test_configuration_reference_is_generated():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == settings.markdown(), (
        "docs/configuration.md differs from what popgate/settings.py generates; "
        f"regenerate it with:  {REGENERATE}")


def test_the_slug_is_githubs():
    assert slug("Through a pipe: `popgate deliver`") == "through-a-pipe-popgate-deliver"
    assert slug("Maildir or mbox?") == "maildir-or-mbox"
    assert slug("Testing POP3 clients: `popgate.testing`") == "testing-pop3-clients-popgatetesting"
    assert slug("Password guessing, slow and greedy clients") == \
        "password-guessing-slow-and-greedy-clients"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    targets = _LINK.findall(prose(page.read_text()))
    problems = [p for p in (link_problem(page, t) for t in targets) if p]
    assert not problems, "\n".join(problems)


def test_the_docs_are_linked_from_the_readme():
    """Every page of docs/ is reachable: linked from the README or from a
    page the README links to."""
    linked = set()
    for page in PAGES:
        for target in _LINK.findall(prose(page.read_text())):
            where = target.partition("#")[0]
            if where and not re.match(r"^[a-z][a-z0-9+.-]*:", where):
                linked.add((page.parent / where).resolve())
    assert not [p.name for p in DOCS if p.resolve() not in linked]


def repo_paths(text: str) -> list[str]:
    """The repository paths named in C{text}: those that end in C{/} (a
    directory) or whose last part has a dot (a file), so that a path
    relative to somewhere else (Postfix's C{popgate/lmtp} socket) is not
    taken for one of ours; C{.ci/} paths always."""
    found = []
    for match in _REPO_PATH.finditer(text):
        path = match.group(1).rstrip(".")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if path.endswith("/") or "." in last or path.startswith(".ci/"):
            if not path.startswith(_GENERATED):
                found.append(path)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_in_the_docs_exists(page: Path):
    text = page.read_text()
    spans = inline_code(text) + fenced_code(text)
    missing = sorted({p for span in spans for p in repo_paths(span) if not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


@pytest.mark.parametrize("path", ETC, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_in_etc_exists(path: Path):
    """The examples' comments point at docs and other examples: those
    exist, and so do the headings they point into."""
    text = path.read_text()
    problems = []
    for match in re.finditer(r"(?<![\w/.~-])((?:etc|docs|popgate|bench|tests)/[\w./-]*\w)(#[\w-]+)?",
                             text):
        target, anchor = match.group(1), match.group(2)
        last = target.rsplit("/", 1)[-1]
        if "." not in last:
            continue  # a path relative to elsewhere (lmtp:unix:popgate/lmtp)
        if not (ROOT / target).exists():
            problems.append(f"no file {target}")
        elif anchor and anchor[1:] not in anchors(ROOT / target):
            problems.append(f"no heading {anchor} in {target}")
    assert not problems, problems


def resolve(dotted: str) -> Any:
    """The object C{dotted} names: the longest importable module prefix,
    then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as e:
            if e.name is not None and not ".".join(parts[:cut]).startswith(e.name):
                raise  # the module exists but one of its imports does not
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def dotted_names(spans: list[str]) -> set[str]:
    names = set()
    for span in spans:
        for match in _DOTTED.finditer(span):
            name = match.group(1)
            if name.rsplit(".", 1)[-1] not in _FILE_SUFFIXES:
                names.add(name)
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dotted_name_in_the_docs_imports(page: Path):
    text = page.read_text()
    spans = inline_code(text)
    if page.name == "architecture.md":
        spans += fenced_code(text)  # the layer diagram names modules too
    problems = []
    for name in sorted(dotted_names(spans)):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            problems.append(f"{name}: {e}")
    assert not problems, "\n".join(problems)


def test_every_class_and_interface_in_the_architecture_exists():
    """A bare C{IName}, C{ClassName} or C{ClassName.attribute} in
    docs/architecture.md is defined in a popgate module the page names, or
    in the Twisted modules popgate's seams come from; every C{IName} is a
    zope interface."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [importlib.import_module(name) for name in _TWISTED]
    for name in dotted_names(inline_code(text) + fenced_code(text)):
        parts = name.split(".")
        for cut in range(1, len(parts) + 1):  # popgate.stores.maildir.MaildirStore: its module
            obj = resolve(".".join(parts[:cut]))
            if type(obj).__name__ == "module" and name.startswith("popgate."):
                modules.append(obj)
    checked, problems = 0, []
    for span in inline_code(text):
        if _DOTTED.search(span) or not re.fullmatch(r"[\w.]+(\(.*\))?", span):
            continue  # qualified names are checked above; prose and replies are no names
        for match in _CAMEL.finditer(span):
            name, attributes = match.group(1), match.group(2)
            if hasattr(builtins, name):
                continue
            owners = [getattr(m, name) for m in modules if hasattr(m, name)]
            if not owners:
                problems.append(f"{name}: in none of the modules the page names")
                continue
            obj = owners[0]
            try:
                for attribute in attributes.split(".")[1:]:
                    # An interface's methods are its items, not attributes.
                    obj = obj[attribute] if type(obj).__name__ == "InterfaceClass" \
                        else getattr(obj, attribute)
            except (AttributeError, KeyError) as e:
                problems.append(f"{name}{attributes}: {e!r}")
                continue
            if re.fullmatch(r"I[A-Z]\w+", name) and type(owners[0]).__name__ != "InterfaceClass":
                problems.append(f"{name} is not a zope interface")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked > 40  # the page names its classes and interfaces


def test_the_readme_quick_start_is_short():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block is not None
    assert len(block.group(1).strip().splitlines()) <= 10


# -- docs/operations.md names every event and metric an admin can meet

OPERATIONS = ROOT / "docs" / "operations.md"


def test_every_event_is_in_the_operations_page():
    """Each event of the catalogue, and each value of its C{reason} and
    C{result} fields, is in docs/operations.md as inline code."""
    from popgate.events import CATALOGUE

    named = set(inline_code(OPERATIONS.read_text()))
    words = {w for span in named for w in re.findall(r"[\w.-]+", span)}
    missing = [f"event {name}" for name in CATALOGUE if name not in named]
    for name, event in CATALOGUE.items():
        for f in event.fields:
            if f.name in ("reason", "result"):
                missing += [f"{name} {f.name}={v}" for v in f.values if v and v not in words]
    assert not missing, "docs/operations.md does not name: " + ", ".join(missing)


def test_every_metric_is_in_the_operations_page():
    """Each popgate_ series a scrape can return is in docs/operations.md."""
    from popgate.metrics import Metrics

    metrics = Metrics(process=False)
    families = list(metrics.registry.collect()) + metrics.live.describe()
    names = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert len(names) > 20
    text = OPERATIONS.read_text()
    missing = sorted(n for n in names if not re.search(rf"`{n}`", text))
    assert not missing, f"docs/operations.md does not list: {missing}"


def test_every_configuration_row_has_five_cells():
    """A C{|} inside a cell (C{text|json}) is escaped, so no row breaks."""
    rows = [line for line in settings.markdown().splitlines() if line.startswith("| ")]
    assert len(rows) > 20
    bad = [row for row in rows if len(re.split(r"(?<!\\)\|", row)) != 7]
    assert not bad, bad
