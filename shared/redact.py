"""PII and secret redaction applied to every log event before it is written.

Two passes: a field whose *name* says it holds a secret (password, token, authorization, ...) is masked whole;
every other string value is scanned for emails, bearer tokens and JWTs, `name=value` secrets, TOTP secrets and
recovery codes, TFNs, ABNs and bank account numbers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "RECOVERY_CODE_ALPHABET",
    "REDACTED",
    "SECRET_FIELD",
    "TOTP_SECRET_CHARS",
    "redact_event",
    "redact_fields",
    "redact_text",
    "redact_value",
]

REDACTED = "[REDACTED]"
# What the auth service makes (services/auth/mfa.py; tests/unit/test_shared_redact.py keeps them equal): TOTP
# secrets of exactly 32 base32 characters, recovery codes `xxxx-xxxx-xxxx` in Crockford's base32 (no i, l, o, u)
# with at least one letter that is not a hex digit. Matching exactly these, not any run of 16 capitals or any
# 4-4-4 group, keeps ordinary text readable: `INTERNAL_SERVER_ERROR`-style words, `time-zone-area`, and hex
# request ids such as `a9f3-4b2c-8d1e`, which log correlation needs.
TOTP_SECRET_CHARS = 32
RECOVERY_CODE_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

# Any character outside ASCII but Unicode's white space (what `\s` matches), as a character class.
_NON_ASCII_VISIBLE = r"[^\x00-\x7f\s]"

SECRET_FIELD = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|cookie|api[_-]?key|access[_-]?code|"
    r"recovery[_-]?codes?|totp|otp[_-]?secret|private[_-]?key|dsn|database[_-]?url|redis[_-]?url|"
    r"\btfn|\babn|\bbsb|account[_-]?(number|no)|card[_-]?number",
    re.IGNORECASE,
)


def _recovery_code_pattern() -> str:
    """Three groups of four of the alphabet, all lower or all upper case, not all of them hex digits."""
    cases = []
    for alphabet, hex_digits in ((RECOVERY_CODE_ALPHABET, "0-9a-f"), (RECOVERY_CODE_ALPHABET.upper(), "0-9A-F")):
        group = f"[{alphabet}]{{4}}"
        not_hex = "".join(c for c in alphabet if c not in "0123456789abcdefABCDEF")
        cases.append(f"(?=[{hex_digits}-]*[{not_hex}]){group}-{group}-{group}")
    return rf"(?:(?<![\w-])|(?<=%[0-9A-Fa-f]{{2}}))(?:{'|'.join(cases)})(?![\w-])"


_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    (re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/=]{6,}"), "Basic [REDACTED]"),
    # `"password": "x"`, `password: x`, `client_secret=x`, `"refresh_token": "x"` (JSON, YAML-ish and form text
    # alike). No \b before the name: `refresh_token`, `access_token` and `otp_secret` end in one after a `_`.
    (
        re.compile(
            r"(?i)([\"']?(?:password|passwd|pwd|secret|token|access_code|recovery_codes?)[\"']?\s*[:=]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s&,;}]+)"
        ),
        r"\1[REDACTED]",
    ),
    # Echoed inputs in driver and validation errors: asyncpg's `query argument $2: '...'`, pydantic's input_value.
    (re.compile(r"(?i)(query argument \$\d+:\s*)('[^']*'|\S+)"), r"\1[REDACTED]"),
    (re.compile(r"(input_value=)('[^']*'|\"[^\"]*\"|[^,\s\]]+)"), r"\1[REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED:jwt]"),
    (re.compile(r"(?i)(?<=://)[^/\s:@]+:[^/\s]*@"), "[REDACTED]@"),
    # Local part: RFC 5322 atext and dots, so `o'brien+tax@example.com` is caught whole, and any non-ASCII
    # character but a space (RFC 6531), so `audİtor@...` and `jöhn@exämple.com` are too; `%40` is an "@" in a URL
    # (the otpauth URI's label).
    (
        re.compile(
            rf"(?:[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]|{_NON_ASCII_VISIBLE})+(?:@|%40)"
            rf"(?:[A-Za-z0-9.-]|{_NON_ASCII_VISIBLE})+\.(?:[A-Za-z]|{_NON_ASCII_VISIBLE}){{2,}}"
        ),
        "[REDACTED:email]",
    ),
    # Digit patterns are bounded by "no word character or decimal part" rather than \b, so money
    # (`1250000.00`) is not mistaken for an account; UUIDs are set aside before these run (see redact_text).
    # BSB (6 digits, usually NNN-NNN) followed by an account number of 4-10 digits.
    (re.compile(r"(?<!\w)(?<!\d\.)\d{3}-?\d{3}[ -]\d{4,10}(?!\w|\.\d)"), "[REDACTED:bank_account]"),
    # ABN: 11 digits, commonly grouped 2-3-3-3.
    (re.compile(r"(?<!\w)(?<!\d\.)\d{2} ?\d{3} ?\d{3} ?\d{3}(?!\w|\.\d)"), "[REDACTED:abn]"),
    # TFN: 8 or 9 digits, commonly grouped 3-3-3.
    (re.compile(r"(?<!\w)(?<!\d\.)\d{3}[ -]?\d{3}[ -]?\d{2,3}(?!\w|\.\d)"), "[REDACTED:tfn]"),
    # Any other long run of digits is taken as an account number.
    (re.compile(r"(?<!\w)(?<!\d\.)\d{6,}(?!\w|\.\d)"), "[REDACTED:number]"),
    # Recovery codes as services/auth/mfa.py prints them (`7k2m-q9xz-h4tb`), or all upper case as someone may
    # retype them; a fourth group makes it a hyphenated word, not a code. A %XX escape before it still counts as
    # a boundary (a code in an encoded URL).
    (re.compile(_recovery_code_pattern()), "[REDACTED:recovery_code]"),
    # TOTP secrets: exactly our length of base32 (RFC 4648), as a word of its own or after a %XX escape (an
    # otpauth URI inside an encoded URL). Last, so that an email or a digit run with such a part is caught whole
    # first. `secret=...` (the otpauth URI, a form) and `"secret": "..."` are the named-pair pattern's.
    (
        re.compile(rf"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{{2}}))[A-Z2-7]{{{TOTP_SECRET_CHARS}}}(?![A-Za-z0-9])"),
        "[REDACTED:totp_secret]",
    ),
)

# Values of these fields are ours and never PII; scanning them would mangle ids, timings and status codes.
_TRUSTED_FIELDS = frozenset(
    {
        "time",
        "level",
        "service",
        "request_id",
        "traceparent",
        "status",
        "duration_ms",
        "route",
        "method",
        "pid",
        "client",
        "traffic",
        "upstream",
        "instance",
    }
)
# Every pattern above needs one of these: a digit, "@", "=", ":", "eyJ", "bearer" or "basic", two hyphens (a
# recovery code), or an upper-case ASCII letter in a text of 32 characters or more (a TOTP secret). A string with
# none cannot match, so most log values (event names, paths) skip the scan. tests/unit/test_shared_redact.py
# checks that this never changes a result.
_MAYBE_SENSITIVE = re.compile(  # \d: the digit patterns match any Unicode digit
    rf"[\d@=:]|eyJ|(?i:bearer|basic)|-[^-]*-|\A(?=[\s\S]{{{TOTP_SECRET_CHARS}}})[\s\S]*?[A-Z]"
)
_SENSITIVE_CHARACTERS = frozenset("0123456789@=:")


def _maybe_sensitive(text: str) -> bool:
    """`_MAYBE_SENSITIVE.search(text)`, with string methods for ASCII text (a regex search costs more than the
    rest of a log line). Non-ASCII text takes the regex: its case-insensitive match knows Unicode's case rules."""
    if not text.isascii():
        return _MAYBE_SENSITIVE.search(text) is not None
    if not _SENSITIVE_CHARACTERS.isdisjoint(text) or "eyJ" in text:
        return True
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered or (lowered != text and len(text) >= TOTP_SECRET_CHARS):
        return True
    # A method call costs several times an `in`: counted only in text with a hyphen (most paths have none).
    return "-" in text and text.count("-") >= 2


_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")


def _redact_piece(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_piece_if_sensitive(text: str) -> str:
    return _redact_piece(text) if _maybe_sensitive(text) else text


def redact_text(text: str) -> str:
    """Mask every PII or secret pattern found in a free-text value; UUIDs (our identifiers) are kept whole."""
    if not _maybe_sensitive(text):
        return text
    # The pieces between UUIDs are checked again: in `/alerts/<uuid>/resolve` the digits were the UUID's, and
    # `/alerts/` and `/resolve` skip the patterns (a tenth of the instructions of scanning them).
    return _redact_around_uuids(text, _redact_piece_if_sensitive)


def _redact_scanned(text: str) -> str:
    """`redact_text` without any precheck: every pattern over every piece (what the tests compare it with)."""
    return _redact_around_uuids(text, _redact_piece)


def _redact_around_uuids(text: str, redact_piece: Callable[[str], str]) -> str:
    pieces: list[str] = []
    position = 0
    for match in _UUID.finditer(text):
        pieces.append(redact_piece(text[position : match.start()]))
        pieces.append(match.group())
        position = match.end()
    pieces.append(redact_piece(text[position:]))
    return "".join(pieces)


@functools.lru_cache(maxsize=4096)
def _is_secret_field(key: str) -> bool:
    # Field names come from our code (a bounded set): one regex search per name, not per log line.
    return SECRET_FIELD.search(key) is not None


def redact_value(key: str, value: Any) -> Any:
    """Redact one field: masked whole when its name is secret-like, else scanned recursively."""
    if key in _TRUSTED_FIELDS:
        return value
    if _is_secret_field(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(key, item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        # A number is PII by what it is called (`tfn`, `abn`, `account_number`: masked above), not by its digits:
        # a count of 123456789 looks exactly like a TFN.
        return value
    # Bytes and anything else are redacted as the text they will be written as.
    return redact_text(value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value))


def redact_fields(event: MutableMapping[Any, Any]) -> None:
    """Redact every field of `event` in place (a log line being built, which nothing else holds)."""
    for key in event.keys() - _TRUSTED_FIELDS:  # a set operation: most fields of a line are trusted
        event[key] = redact_value(key, event[key])


def redact_event(event: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of a log event with every field redacted."""
    redacted = dict(event)
    redact_fields(redacted)
    return redacted
