"""The one rule by which an email address becomes an account key (login lookup, uniqueness, login lockout).

    canonical_email(text)  NFKC, then strip; refused unless what is left is printable ASCII
    email_key(text)        canonical_email(text), lower-cased

NFKC first, so that what a keyboard or an IME may produce for the same address (fullwidth letters, U+017F the
long s, U+212A the Kelvin sign) is the plain letter; the strip after it, because NFKC can turn an exotic space
into an ASCII one. Anything still outside ASCII is refused rather than case-folded: Python's `casefold()` and
PostgreSQL's `lower()` disagree on it (U+0130, I with a dot above, is `i` plus U+0307 to one and `i` to the other
under a UTF-8 locale), which is how a variant of a locked address once logged in with a fresh set of guesses. On
ASCII, lower-casing is the same everywhere and in every locale. A domain with non-ASCII labels is written in its
IDNA (`xn--`) form.

Text longer than `EMAIL_MAX_CHARS` is refused before anything else: NFKC and the character check cost time in
proportion to the text (a 1 MB address held the event loop for 185 ms), and no such text can pass the rule
unless it is padded with spaces. NFKC never shortens a text whose result is ASCII (no character decomposes to
nothing, and composition only ever produces non-ASCII characters), so only the strip could bring it back under
the limit.
"""

from __future__ import annotations

import unicodedata

# RFC 5321's limits: 64 for the local part, 255 for the domain; 320 is the figure everyone uses.
EMAIL_MAX_CHARS = 320
TOO_LONG_MESSAGE = f"An email address is at most {EMAIL_MAX_CHARS} characters"
NOT_ASCII_MESSAGE = (
    "An email address is printable ASCII without spaces (an international domain is written in its xn-- form)"
)


def canonical_email(text: str) -> str:
    """The address as stored and shown: NFKC-normalised and stripped; ValueError unless printable ASCII of at
    most `EMAIL_MAX_CHARS` (checked first, on the text as given)."""
    if len(text) > EMAIL_MAX_CHARS:
        raise ValueError(TOO_LONG_MESSAGE)
    canonical = unicodedata.normalize("NFKC", text).strip()
    if not all("!" <= character <= "~" for character in canonical):
        raise ValueError(NOT_ASCII_MESSAGE)
    return canonical


def email_key(text: str) -> str:
    """The account key of an address: `canonical_email`, lower-cased. Equal keys are the same address."""
    return canonical_email(text).lower()
