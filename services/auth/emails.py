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
"""

from __future__ import annotations

import unicodedata

NOT_ASCII_MESSAGE = (
    "An email address is printable ASCII without spaces (an international domain is written in its xn-- form)"
)


def canonical_email(text: str) -> str:
    """The address as stored and shown: NFKC-normalised and stripped; ValueError unless printable ASCII."""
    canonical = unicodedata.normalize("NFKC", text).strip()
    if not all("!" <= character <= "~" for character in canonical):
        raise ValueError(NOT_ASCII_MESSAGE)
    return canonical


def email_key(text: str) -> str:
    """The account key of an address: `canonical_email`, lower-cased. Equal keys are the same address."""
    return canonical_email(text).lower()
