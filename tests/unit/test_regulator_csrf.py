"""The portal's CSRF tokens (services.regulator.csrf): bound to one browser id and one key, refused otherwise."""

from __future__ import annotations

from services.regulator import csrf
from shared.config import Secret


def test_a_token_matches_only_its_browser_and_key() -> None:
    key = csrf.derive_key(Secret("s" * 43))
    assert key == csrf.derive_key(Secret("s" * 43))  # every replica derives the same key
    assert key != csrf.derive_key(Secret("t" * 43))
    browser, other = csrf.new_browser_id(), csrf.new_browser_id()
    assert csrf.browser_id_is_valid(browser) and browser != other
    token = csrf.token_for(key, browser)
    assert csrf.token_matches(key, browser, token)
    assert not csrf.token_matches(key, other, token)
    assert not csrf.token_matches(csrf.derive_key(Secret("t" * 43)), browser, token)
    assert not csrf.token_matches(key, browser, None)
    assert not csrf.token_matches(key, None, token)
    assert not csrf.token_matches(key, browser, token[:-1])
    assert not csrf.token_matches(key, browser, "é" + token[1:])
    assert not csrf.token_matches(key, "short", csrf.token_for(key, "short"))  # not an id we issue
    assert csrf.derive_key(None) == csrf.derive_key(None)  # one random key for the process's life
