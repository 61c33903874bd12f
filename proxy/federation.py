"""`/federate` with Prometheus's semantics over every service's `/metrics`.

At least one `match[]` instant-vector selector is required (several are a union); each selected series comes
back with its current value, labelled `service` and `instance`. A label of the same name already on the series
is kept as `exported_<name>`, as a Prometheus scrape with `honor_labels: false` would.

The endpoint is public, so its cost is bounded (issue #9, finding 1: 40 selectors of 32 regex matchers held the
event loop for 20 s, one RE2 call through the binding costing about 10 us): at most `MAX_SELECTORS` selectors of
`MAX_MATCHERS` matchers; samples are indexed once per exposition by label value (`Source`), so a matcher is
tested once per distinct value, never per sample, and an exact `__name__` is a dict lookup; and parsing,
indexing and matching are generators that `run_in_slices` drives a couple of milliseconds at a time, yielding
the loop in between and giving up past a budget.

Compiling is bounded too (a review of the fix: with RE2's default 8 MiB of memory per regex,
`(?i)[\\pL\\pN\\pP\\pS]{300}` compiled for 255 ms and kept 2.7 MB, and one selector of 20 such matchers held the
loop 7 s): each regex gets `RE2_MAX_MEM_BYTES`, which stops a big program within a few milliseconds ("pattern too
large"), and at most `MAX_CLASS_ESCAPES` Unicode classes, whose parsing that memory does not bound; each compile
is one step of the slices, counted against the budget; and only `COMPILED_REGEXES` compiled regexes are kept.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import re2

MAX_REGEX_CHARS = 512
# Measured on this VM: the slowest pattern that fits in 128 KiB compiles in about 5 ms, and one that does not
# fails in about 1.5 ms (at RE2's default 8 MiB, 255 ms); `.*`, alternations of names and `[a-z0-9_]{1,100}`
# stay far below it. The DFA RE2 builds while matching shares the same memory (past it RE2 matches with its NFA,
# slower but still linear).
RE2_MAX_MEM_BYTES = 128 * 1024
# Parsing `\pL` under `(?i)` costs about 0.3 ms, before any program is built: 32 of them were 10 ms.
MAX_CLASS_ESCAPES = 8
# A Prometheus server sends the same few selectors every scrape; at most RE2_MAX_MEM_BYTES each, 8 MiB in all.
COMPILED_REGEXES = 64
MAX_SELECTORS = 10
MAX_MATCHERS = 20
# Work between two looks at the clock, well under a millisecond: lines parsed, samples indexed or rendered, and
# label values tested (one RE2 call through the binding costs about 10 us).
STEP_LINES = 256
STEP_VALUES = 16
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = RE2_MAX_MEM_BYTES
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPS = ("=~", "!~", "!=", "=")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"', "'": "'", "t": "\t"}


class SelectorError(ValueError):
    pass


class BudgetExceeded(Exception):
    """The work took more event-loop time than its budget."""


def compile_label_regex(pattern: str) -> Any:
    """RE2, as Prometheus uses: linear time whatever the pattern, so `/federate` cannot be made to backtrack
    for minutes (`(.*.*)*X` takes Python's `re` over two minutes on an 18-character name)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise SelectorError(f"regular expression longer than {MAX_REGEX_CHARS} characters")
    if pattern.count("\\p") + pattern.count("\\P") > MAX_CLASS_ESCAPES:
        raise SelectorError(f"more than {MAX_CLASS_ESCAPES} Unicode classes (\\p, \\P) in a regular expression")
    return _compile(pattern)


@functools.lru_cache(maxsize=COMPILED_REGEXES)
def _compile(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        # RE2's message for a program past max_mem is "pattern too large - compile failed" (bytes, from C++).
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise SelectorError(f"bad regular expression {pattern!r}: {detail}") from None


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str
    regex: Any = field(default=None, compare=False, repr=False)
    # A regex matcher's answer per label value for the request that parsed it: every service exposes the same
    # metric names and most of the same label values. Bounded by the distinct values of the expositions.
    seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self.seen.get(actual)
        if hit is None:
            hit = self.seen[actual] = (self.regex.fullmatch(actual) is not None) == (self.op == "=~")
        return hit


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        return all(m.matches(name if m.label == "__name__" else labels.get(m.label, "")) for m in self.matchers)

    def cheapest_first(self) -> list[Matcher]:
        """The matchers in the order that empties a selection soonest: exact ones (a dict lookup), then names."""
        return sorted(self.matchers, key=lambda m: (m.op not in ("=", "!="), m.label != "__name__"))


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
    return run_to_end(parse_selector_steps(text))


def parse_selector_steps(text: str) -> Generator[None, None, Selector]:
    """`parse_selector` as a generator that yields after each regex it compiles (see `run_in_slices`)."""
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
            regex = None
            if op in ("=~", "!~"):
                regex = compile_label_regex(value)
                yield
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
    return run_to_end(parse_exposition_steps(text))


def parse_exposition_steps(text: str) -> Generator[None, None, list[Family]]:
    """`parse_exposition` as a generator that yields every `STEP_LINES` lines (see `run_in_slices`)."""
    families: list[Family] = []
    kinds: dict[str, str] = {}
    current: list[Sample] = []
    current_name, current_kind = "", "untyped"

    def flush() -> None:
        if current:
            families.append(Family(current_name, current_kind, tuple(current)))

    for number, line in enumerate(text.splitlines()):
        if number % STEP_LINES == 0:
            yield
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


@dataclass(frozen=True)
class Source:
    """One exposition and what federation adds to its series, indexed as Prometheus's TSDB does: for each label
    (and `__name__`), each value's sample positions. A matcher then costs one test per distinct value and set
    operations in C, not a test per sample; an exact `__name__` is a dict lookup."""

    added: dict[str, str]
    samples: list[tuple[Family, Sample]]
    postings: dict[str, dict[str, list[int]]]
    everything: frozenset[int]
    # Per label, the positions of the samples that have it (filled on first use; bounded by the label names).
    labelled: dict[str, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, added: dict[str, str], families: list[Family]) -> Source:
        return run_to_end(index_steps(added, families))

    def selected(self, selector: Selector) -> Generator[None, None, set[int]]:
        """The positions of the samples `selector` selects: its matchers' selections intersected, cheapest first,
        stopping once nothing is left."""
        chosen: set[int] | None = None
        for matcher in selector.cheapest_first():
            found = yield from self.positions(matcher)
            chosen = found if chosen is None else chosen & found
            yield
            if not chosen:
                return set()
        return chosen or set()

    def positions(self, matcher: Matcher) -> Generator[None, None, set[int]]:
        """The positions of the samples `matcher` selects (a missing label reads as the empty string)."""
        values = self.postings.get(matcher.label, {})
        if matcher.op == "=" and matcher.value:
            return set(values.get(matcher.value, ()))
        chosen: set[int] = set()
        for count, (value, where) in enumerate(values.items()):
            if count % STEP_VALUES == 0:
                yield
            if matcher.matches(value):
                chosen.update(where)
        if matcher.matches(""):
            having = self.labelled.get(matcher.label)
            if having is None:
                having = self.labelled[matcher.label] = frozenset(i for where in values.values() for i in where)
            chosen |= self.everything - having
        return chosen


def index_steps(added: dict[str, str], families: list[Family]) -> Generator[None, None, Source]:
    """`Source.of` as a generator that yields every `STEP_LINES` samples (see `run_in_slices`)."""
    samples: list[tuple[Family, Sample]] = []
    postings: dict[str, dict[str, list[int]]] = {"__name__": {}}
    names = postings["__name__"]
    for family in families:
        for sample in family.samples:
            position = len(samples)
            if position % STEP_LINES == 0:
                yield
            samples.append((family, sample))
            names.setdefault(sample.name, []).append(position)
            for label, value in sample.labels:
                postings.setdefault(label, {}).setdefault(value, []).append(position)
    return Source(added, samples, postings, frozenset(range(len(samples))))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def relabel(labels: Iterable[tuple[str, str]], added: dict[str, str]) -> list[tuple[str, str]]:
    out = [((f"exported_{k}" if k in added else k), v) for k, v in labels]
    return out + list(added.items())


def render(sources: Sequence[tuple[dict[str, str], list[Family]]], selectors: Sequence[Selector]) -> str:
    """The federated exposition: the samples any selector picks, each family's lines together under one TYPE."""
    return run_to_end(render_steps([Source.of(added, families) for added, families in sources], selectors))


def render_steps(sources: Sequence[Source], selectors: Sequence[Selector]) -> Generator[None, None, str]:
    """`render` as a generator that yields between matchers and every `STEP_LINES` values or lines of work (see
    `run_in_slices`)."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for source in sources:
        chosen: set[int] = set()
        for selector in selectors:
            chosen |= yield from source.selected(selector)
        for count, position in enumerate(sorted(chosen)):
            if count % STEP_LINES == 0:
                yield
            family, sample = source.samples[position]
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in relabel(sample.labels, source.added))
            grouped.setdefault(family.name, (family.kind, []))[1].append(f"{sample.name}{{{body}}} {sample.value}")
    lines: list[str] = []
    for name, (kind, samples) in grouped.items():
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + ("\n" if lines else "")


# --- driving the generators -------------------------------------------------------------------------------------

T = TypeVar("T")


def run_to_end(steps: Generator[None, None, T]) -> T:
    """A step generator's result, computed at once (for callers off the event loop, and tests)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_in_slices(
    steps: Generator[None, None, T], *, slice_s: float, budget_s: float, rest_ratio: float = 0.0
) -> T:
    """A step generator's result, computed on the event loop at most `slice_s` at a time, yielding to the other
    tasks in between (and sleeping `rest_ratio` times each slice's length, so the work takes at most
    1 / (1 + rest_ratio) of the loop); `BudgetExceeded` once its slices add up to more than `budget_s`."""
    used = 0.0
    started = time.perf_counter()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        now = time.perf_counter()
        if now - started >= slice_s:
            used += now - started
            if used > budget_s:
                steps.close()
                raise BudgetExceeded(f"more than {budget_s} s of work")
            await asyncio.sleep((now - started) * rest_ratio)
            started = time.perf_counter()
