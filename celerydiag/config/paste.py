"""One paste block: every finding's fix merged into one configuration, in the user's style.

Why: several findings change the same setting (the lock-timeout, isolation and connect-timeout
fixes all print ``database_engine_options``; the confirm fixes ``broker_transport_options``).
Pasted one after the other, the last dict silently replaces the others. So the report ends with
one block that applies them all, dicts merged key by key, and :func:`unify` makes each finding's
own fix a *view* of that block: the same value for every setting it names, spelled the way the
user's config spells settings (:mod:`celerydiag.config.style`). Two printed fixes can then never
contradict each other.

A fix's config is read back from its text (``ast``): every fix builder prints literal Python
(``config.fixes.assignments``), and a value we must not print (a secret) is a comment telling the
user to keep theirs, carried through the merge as :data:`KEEP`. A fix whose config is not plain
``NAME = literal`` lines (code to run, not settings) is kept as written and appended as it is.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celerydiag.config.fixes import _source
from celerydiag.config.style import Naming, detect, to_new
from celerydiag.findings import Finding, Report, Severity

# Settings whose fix replaces a whole part of the deployment rather than tuning it: moving
# result_backend moves every result of the app (not only progress) and makes the database fixes
# moot, so the block offers it as a commented alternative instead of applying it.
ALTERNATIVES = frozenset({"result_backend"})
STYLE_META = "config_style"  # the report's meta key holding the user's Naming
_KEEP_LINE = re.compile(r"^(\s*)#\s*('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"):\s*keep your existing value\s*$")
_KEEP_TEXT = "\x00celerydiag-keep\x00"


class _Keep:
    """A value the fix would not print (a secret): the user keeps their own. Not a literal, so
    :func:`config.fixes._source` renders it as the same 'keep your existing value' comment."""

    def __repr__(self) -> str:
        return "<keep your existing value>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Keep)

    def __hash__(self) -> int:
        return 0


KEEP = _Keep()


@dataclass
class Parsed:
    """One fix's config: its settings by new name, its standalone comments, and code we could
    not read as settings (kept verbatim)."""

    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    code: str = ""


def _unkeep(value: Any) -> Any:
    if value == _KEEP_TEXT:
        return KEEP
    if isinstance(value, dict):
        return {k: _unkeep(v) for k, v in value.items()}
    return value


def parse(config: str, naming: Naming | None = None) -> Parsed:
    """The settings a fix's text assigns, by their new lowercase names."""
    if not config.strip():
        return Parsed()
    lines = [(_KEEP_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)}: {_KEEP_TEXT!r},", line))
             for line in config.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return Parsed(code=config)
    out = Parsed()
    spans: set[int] = set()
    code: list[str] = []
    for node in tree.body:
        span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        spans.update(span)
        value: Any = None
        literal = isinstance(node, ast.Assign) and len(node.targets) == 1 \
            and isinstance(node.targets[0], ast.Name)
        if literal:
            try:
                value = ast.literal_eval(node.value)  # type: ignore[attr-defined]
            except (ValueError, SyntaxError, TypeError):
                literal = False
        if literal:
            out.settings[_new_name(node.targets[0].id, naming)] = _unkeep(value)  # type: ignore[attr-defined]
        else:  # code to run (a serializer registration): kept as written, in order
            code.append("\n".join(lines[i - 1] for i in span))
    out.code = "\n".join(code) + "\n" if code else ""
    for number, line in enumerate(lines, 1):
        if number not in spans and line.strip().startswith("#"):
            out.notes.append(line.strip())
    return out


def _new_name(name: str, naming: Naming | None) -> str:
    if naming is not None and naming.prefix and name.startswith(naming.prefix):
        return name[len(naming.prefix):].lower()
    return to_new(name)


@dataclass
class Merged:
    """Every fix's settings in one configuration, plus what could not be merged."""

    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # "setting[key]: a vs b"; empty by design


def _merge_into(into: dict[str, Any], name: str, value: Any, path: str, conflicts: list[str]) -> None:
    if name not in into:
        into[name] = dict(value) if isinstance(value, Mapping) else value
        return
    old = into[name]
    if isinstance(old, dict) and isinstance(value, Mapping):
        for key, item in value.items():
            _merge_into(old, key, item, f"{path}[{key!r}]", conflicts)
        return
    if isinstance(old, list) and isinstance(value, list):
        # content-type lists (accept_content, result_accept_content): every fix's types are
        # needed at once (a serializer switch adds one), except a pickle-family type one of them
        # leaves out: the security fix wins over a latency one
        union = old + [item for item in value if item not in old]
        into[name] = [item for item in union if not (_pickle_like(item) and (item not in old or item not in value))]
        return
    if old != value and _pickle_like(old) != _pickle_like(value):
        into[name] = value if _pickle_like(old) else old  # never trade code execution for speed
        return
    if old != value:
        conflicts.append(f"{path}: {old!r} vs {value!r}")


def _pickle_like(value: Any) -> bool:
    from celerydiag.config.probe import PICKLE_MARKERS

    return isinstance(value, str) and any(m in value.lower() for m in PICKLE_MARKERS)


def merge(parsed: Iterable[Parsed]) -> Merged:
    """Dicts merged key by key, in the order given; a scalar two fixes set differently is a
    conflict (the first value is kept), which the fix builders are written never to produce."""
    out = Merged()
    for one in parsed:
        for name, value in one.settings.items():
            if name in ALTERNATIVES and name in out.settings:
                continue  # placeholders for the user's own server: one suggestion is enough
            _merge_into(out.settings, name, value, name, out.conflicts)
        out.notes += [n for n in one.notes if n not in out.notes]
        if one.code and one.code not in out.code:
            out.code.append(one.code)
    for serializer, accept in (("result_serializer", "result_accept_content"), ("task_serializer", "accept_content")):
        chosen, accepted = out.settings.get(serializer), out.settings.get(accept)
        if _pickle_like(chosen) and isinstance(accepted, list) and chosen not in accepted:
            del out.settings[serializer]  # the security fix dropped its content type: drop it too
    return out


def render(settings: Mapping[str, Any], naming: Naming) -> str:
    """``NAME = value`` lines in the user's style (secrets as 'keep your value' comments)."""
    return "".join(f"{naming.name(name)} = {_source(value)}\n" for name, value in settings.items())


def naming_of(report: Report) -> Naming:
    return Naming.from_dict(dict(report.meta).get(STYLE_META))


def _fixes(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.fix is not None and f.fix.config and f.severity != Severity.OK]


def merged(report: Report) -> Merged:
    naming = naming_of(report)
    return merge(parse(f.fix.config, naming) for f in _fixes(report.findings) if f.fix)


def paste_block(report: Report) -> str:
    """The report's one configuration to paste: every fix at once, in the user's style. Empty
    when no finding prints a config change."""
    naming = naming_of(report)
    block = merged(report)
    if not (block.settings or block.code or block.notes):
        return ""
    lines = [f"# Every fix of this report at once ({naming.describe()})."]
    if any(isinstance(v, dict) for k, v in block.settings.items() if k not in ALTERNATIVES):
        lines.append("# Dicts are complete: paste them over your own (your other keys are kept in them).")
    settings = {k: v for k, v in block.settings.items() if k not in ALTERNATIVES}
    text = "\n".join(lines) + "\n" + "".join(block.code) + render(settings, naming)
    other = {k: v for k, v in block.settings.items() if k in ALTERNATIVES}
    if other:
        text += ("\n# Some findings suggest another result backend. It moves every result of the app, not only"
                 " progress;\n# point it at your own server and uncomment it:\n")
        text += "".join(f"# {line}\n" for line in render(other, naming).splitlines())
    if block.notes:
        text += "\n" + "\n".join(block.notes) + "\n"
    for conflict in block.conflicts:
        text += f"# NOTE: two findings disagree on {conflict} (reports of different hosts?)\n"
    return text


def _view(config: str, block: Merged, naming: Naming) -> str:
    """A fix's config as the part of the merged block it touches, in the user's style."""
    one = parse(config, Naming())
    if not one.settings:
        return config
    text = render({name: block.settings[name] for name in one.settings}, naming)
    return one.code + text + "".join(f"{note}\n" for note in one.notes)


def unify(report: Report, app: Any) -> Report:
    """``report`` with each fix a view of the one merged block, spelled in ``app``'s style, and
    that style recorded in ``meta`` (a saved report re-renders the same block)."""
    naming = detect(app)
    fixed = _fixes(report.findings)
    block = merge(parse(f.fix.config, Naming()) for f in fixed if f.fix)
    ids = {id(f) for f in fixed}
    findings = tuple(
        replace(f, fix=replace(f.fix, config=_view(f.fix.config, block, naming)))
        if id(f) in ids and f.fix else f
        for f in report.findings)
    return replace(report, findings=findings, meta={**dict(report.meta), STYLE_META: naming.to_dict()})


