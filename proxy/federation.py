"""`/federate` with Prometheus's semantics over every service's `/metrics`.

At least one `match[]` instant-vector selector is required (several are a union); each selected series comes
back with its current value, labelled `service` and `instance`. A label of the same name already on the series
is kept as `exported_<name>`, as a Prometheus scrape with `honor_labels: false` would.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

MAX_REGEX_CHARS = 512
MAX_MATCHERS = 32
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPS = ("=~", "!~", "!=", "=")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"', "'": "'", "t": "\t"}


class SelectorError(ValueError):
    pass


def compile_label_regex(pattern: str) -> Any:
    """RE2, as Prometheus uses: linear time whatever the pattern, so `/federate` cannot be made to backtrack
    for minutes (`(.*.*)*X` takes Python's `re` over two minutes on an 18-character name)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise SelectorError(f"regular expression longer than {MAX_REGEX_CHARS} characters")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        raise SelectorError(f"bad regular expression {pattern!r}: {exc}") from None


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str
    regex: Any = field(default=None, compare=False, repr=False)

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self.regex.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        return all(m.matches(name if m.label == "__name__" else labels.get(m.label, "")) for m in self.matchers)


def _read_string(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    if quote not in "\"'`":
        raise SelectorError(f"expected a quoted string at {pos}")
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return "".join(out), pos + 1
        if char == "\\" and quote != "`" and pos + 1 < len(text):
            out.append(_ESCAPES.get(text[pos + 1], "\\" + text[pos + 1]))
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise SelectorError("unterminated string")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def parse_selector(text: str) -> Selector:
    """`name{label="v", other=~"re"}`, `name` or `{__name__="name"}`; raises `SelectorError`."""
    text = text.strip()
    matchers: list[Matcher] = []
    name = METRIC_NAME.match(text)
    pos = 0
    if name:
        matchers.append(Matcher("__name__", "=", name.group()))
        pos = name.end()
    pos = _skip_space(text, pos)
    if pos < len(text):
        if text[pos] != "{":
            raise SelectorError(f"unexpected {text[pos]!r} at {pos}")
        pos = _skip_space(text, pos + 1)
        while pos < len(text) and text[pos] != "}":
            label = LABEL_NAME.match(text, pos)
            if label is None:
                raise SelectorError(f"expected a label name at {pos}")
            pos = _skip_space(text, label.end())
            op = next((op for op in _OPS if text.startswith(op, pos)), None)
            if op is None:
                raise SelectorError(f"expected one of {', '.join(_OPS)} at {pos}")
            value, pos = _read_string(text, _skip_space(text, pos + len(op)))
            regex = compile_label_regex(value) if op in ("=~", "!~") else None
            matchers.append(Matcher(label.group(), op, value, regex))
            if len(matchers) > MAX_MATCHERS:
                raise SelectorError(f"more than {MAX_MATCHERS} matchers")
            pos = _skip_space(text, pos)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_space(text, pos + 1)
            elif pos < len(text) and text[pos] != "}":
                raise SelectorError(f'expected "," or "}}" at {pos}')
        if pos >= len(text):
            raise SelectorError("missing }")
        if _skip_space(text, pos + 1) != len(text):
            raise SelectorError("unexpected text after }")
    if not any(not m.matches("") for m in matchers):
        raise SelectorError("a selector needs at least one matcher that does not match the empty string")
    return Selector(tuple(matchers))


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: str


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    samples: tuple[Sample, ...]


def _parse_labels(text: str, pos: int) -> tuple[tuple[tuple[str, str], ...], int]:
    labels: list[tuple[str, str]] = []
    pos += 1
    while text[pos] != "}":
        label = LABEL_NAME.match(text, pos)
        if label is None or text[label.end()] != "=":
            raise ValueError("bad label")
        value, pos = _read_string(text, label.end() + 1)
        labels.append((label.group(), value))
        if text[pos] == ",":
            pos += 1
    return tuple(labels), pos + 1


def parse_exposition(text: str) -> list[Family]:
    """Prometheus text format 0.0.4 into families of samples (comments other than TYPE are dropped)."""
    families: list[Family] = []
    kinds: dict[str, str] = {}
    current: list[Sample] = []
    current_name, current_kind = "", "untyped"

    def flush() -> None:
        if current:
            families.append(Family(current_name, current_kind, tuple(current)))

    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) == 4 and parts[1] == "TYPE":
                flush()
                current = []
                current_name, current_kind = parts[2], parts[3]
                kinds[current_name] = current_kind
            continue
        name = METRIC_NAME.match(line)
        if name is None:
            continue
        labels: tuple[tuple[str, str], ...] = ()
        pos = name.end()
        if pos < len(line) and line[pos] == "{":
            try:
                labels, pos = _parse_labels(line, pos)
            except (ValueError, IndexError, SelectorError):
                continue
        fields = line[pos:].split()
        if not fields:
            continue
        current.append(Sample(name.group(), labels, fields[0]))
    flush()
    return families


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def relabel(labels: Iterable[tuple[str, str]], added: dict[str, str]) -> list[tuple[str, str]]:
    out = [((f"exported_{k}" if k in added else k), v) for k, v in labels]
    return out + list(added.items())


def render(sources: Sequence[tuple[dict[str, str], list[Family]]], selectors: Sequence[Selector]) -> str:
    """The federated exposition: the samples any selector picks, each family's lines together under one TYPE."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for added, families in sources:
        for family in families:
            for sample in family.samples:
                if not any(selector.matches(sample.name, dict(sample.labels)) for selector in selectors):
                    continue
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in relabel(sample.labels, added))
                grouped.setdefault(family.name, (family.kind, []))[1].append(f"{sample.name}{{{body}}} {sample.value}")
    lines: list[str] = []
    for name, (kind, samples) in grouped.items():
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + ("\n" if lines else "")
