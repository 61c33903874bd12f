"""TOTP step matching, recovery codes and the step-up age check, as plain functions (no server)."""

from __future__ import annotations

import base64
import math
import re
import uuid

import pyotp
import pytest
from prometheus_client import REGISTRY

from services.auth import store
from services.auth.mfa import (
    RECOVERY_ALPHABET,
    TOTP_STEP_S,
    find_recovery_code,
    hash_recovery_codes,
    is_totp_code,
    matching_step,
    new_recovery_code,
    new_totp_secret,
    normalise_recovery_code,
    otpauth_uri,
    totp_step,
)
from shared.authz import authorize
from shared.errors import ApiError
from shared.tokens import STEP_UP_MAX_AGE_S, Principal

RECOVERY_CODE = re.compile(r"[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}")
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
OTHER_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
# A time in the middle of step 56_666_667, so ±1 step stays clear of the edges.
AT = 56_666_667 * TOTP_STEP_S + 15.0


def code_at_step(step: int, secret: str = SECRET) -> str:
    return str(pyotp.TOTP(secret).generate_otp(step))


# --- TOTP ----------------------------------------------------------------------------------------------------------


def test_a_new_secret_is_160_bits_of_base32_and_differs_each_time() -> None:
    secret = new_totp_secret()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert len(base64.b32decode(secret)) == 20
    assert len({new_totp_secret() for _ in range(100)}) == 100


def test_otpauth_uri_names_the_issuer_the_account_and_the_secret() -> None:
    uri = otpauth_uri(SECRET, "ann@example.com")
    assert uri.startswith("otpauth://totp/APGMS:ann%40example.com?")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name, parsed.digits, parsed.interval) == (
        SECRET,
        "APGMS",
        "ann@example.com",
        6,
        30,
    )


def test_totp_step_counts_thirty_second_steps_like_pyotp() -> None:
    assert totp_step(AT) == 56_666_667
    assert totp_step(AT) == pyotp.TOTP(SECRET).timecode(AT)
    assert totp_step(0) == 0
    assert totp_step(29.999) == 0
    assert totp_step(30) == 1


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_code_within_one_step_matches_its_own_step(offset: int) -> None:
    step = totp_step(AT) + offset
    assert matching_step(SECRET, code_at_step(step), AT, after=None) == step


@pytest.mark.parametrize("offset", [-3, -2, 2, 3])
def test_a_code_further_away_does_not_match(offset: int) -> None:
    step = totp_step(AT) + offset
    code = code_at_step(step)
    assert code not in {code_at_step(totp_step(AT) + near) for near in (-1, 0, 1)}  # no coincidence in the fixture
    assert matching_step(SECRET, code, AT, after=None) is None


def test_the_code_pyotp_shows_now_matches_the_current_step() -> None:
    assert matching_step(SECRET, pyotp.TOTP(SECRET).at(AT), AT, after=None) == totp_step(AT)


def test_an_accepted_step_and_older_steps_never_match_again() -> None:
    current = totp_step(AT)
    assert matching_step(SECRET, code_at_step(current), AT, after=current) is None
    assert matching_step(SECRET, code_at_step(current - 1), AT, after=current) is None
    assert matching_step(SECRET, code_at_step(current + 1), AT, after=current) == current + 1
    assert matching_step(SECRET, code_at_step(current), AT, after=current - 1) == current


def test_a_wrong_code_or_another_secret_does_not_match() -> None:
    current = totp_step(AT)
    window_codes = {code_at_step(current + offset) for offset in (-1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in window_codes)
    assert matching_step(SECRET, wrong, AT, after=None) is None
    assert matching_step(OTHER_SECRET, code_at_step(current), AT, after=None) is None
    assert matching_step(SECRET, code_at_step(current), AT, after=None, window=0) == current
    assert matching_step(SECRET, code_at_step(current + 1), AT, after=None, window=0) is None


@pytest.mark.parametrize("text", ["123456", "000000", "999999"])
def test_six_ascii_digits_are_a_totp_code(text: str) -> None:
    assert is_totp_code(text)


@pytest.mark.parametrize("text", ["12345", "1234567", "12a456", " 123456", "123456\n", "١٢٣٤٥٦", "", "abcd-efgh-jkmn"])
def test_anything_else_is_not_a_totp_code(text: str) -> None:
    assert not is_totp_code(text)


# --- recovery codes ------------------------------------------------------------------------------------------------


def test_recovery_codes_are_three_groups_of_four_crockford_characters_with_60_bits() -> None:
    codes = [new_recovery_code() for _ in range(1000)]
    assert all(RECOVERY_CODE.fullmatch(code) for code in codes)
    assert len(set(codes)) == 1000
    assert len(RECOVERY_ALPHABET) == len(set(RECOVERY_ALPHABET)) == 32
    assert not set("ilou") & set(RECOVERY_ALPHABET)
    assert 12 * math.log2(len(RECOVERY_ALPHABET)) >= 60
    # Every character of the alphabet turns up: the generator draws from all of it.
    assert set("".join(codes).replace("-", "")) == set(RECOVERY_ALPHABET)


@pytest.mark.parametrize(
    "typed",
    ["abcd-efgh-jkmn", "ABCD-EFGH-JKMN", "abcdefghjkmn", "AbCd EfGh JkMn", " abcd-efgh-jkmn ", "ab-cd-ef-gh-jk-mn"],
)
def test_recovery_codes_normalise_case_hyphens_and_spaces(typed: str) -> None:
    assert normalise_recovery_code(typed) == "abcdefghjkmn"


def test_look_alike_letters_are_read_as_the_digits_they_resemble() -> None:
    assert normalise_recovery_code("O0o0-IiLl-1111") == "000011111111"


@pytest.mark.parametrize(
    "typed", ["", "abcd-efgh-jkm", "abcd-efgh-jkmnp", "abcd-efgh-jkmu", "abcd_efgh_jkmn", "abcd-efgh-jkm!", "123456"]
)
def test_anything_else_is_not_a_recovery_code(typed: str) -> None:
    assert normalise_recovery_code(typed) is None


def stored(codes: list[str]) -> list[store.RecoveryCode]:
    return [
        store.RecoveryCode(id=uuid.uuid4(), salt=salt, code_hash=code_hash)
        for salt, code_hash in hash_recovery_codes(codes)
    ]


def test_each_recovery_code_gets_its_own_salt_and_a_hash_that_hides_it() -> None:
    codes = [new_recovery_code() for _ in range(10)]
    hashed = hash_recovery_codes(codes)
    assert len(hashed) == 10
    assert all(len(salt) == 16 for salt, _ in hashed)
    assert len({salt for salt, _ in hashed}) == 10
    for code, (_, code_hash) in zip(codes, hashed, strict=True):
        assert code.encode() not in code_hash
        assert code.replace("-", "").encode() not in code_hash
    # The same code hashed twice gives two different hashes (the salt differs).
    assert hash_recovery_codes([codes[0]])[0][1] != hashed[0][1]


def test_hashing_refuses_something_that_is_not_a_recovery_code() -> None:
    with pytest.raises(ValueError, match="not a recovery code"):
        hash_recovery_codes(["not a code"])


def test_a_recovery_code_is_found_however_it_was_typed_and_only_that_one() -> None:
    codes = [new_recovery_code() for _ in range(3)]
    rows = stored(codes)
    typed = codes[1].upper().replace("-", "")
    canonical = normalise_recovery_code(typed)
    assert canonical is not None
    assert find_recovery_code(canonical, rows) == rows[1].id
    other = normalise_recovery_code(new_recovery_code())
    assert other is not None
    assert find_recovery_code(other, rows) is None
    assert find_recovery_code(canonical, []) is None


# --- step-up age ---------------------------------------------------------------------------------------------------

STEPPED_UP_AT = 1_700_000_000


def principal(amr: tuple[str, ...] = ("pwd", "otp"), auth_time: int | None = STEPPED_UP_AT) -> Principal:
    return Principal(
        subject=str(uuid.uuid4()),
        kind="user",
        org_id=str(uuid.uuid4()),
        role="admin",
        scopes=frozenset(),
        amr=amr,
        auth_time=auth_time,
        token_id=str(uuid.uuid4()),
        audience="urn:apgms:api",
    )


@pytest.mark.parametrize(
    ("age_s", "stepped_up"), [(0, True), (60, True), (STEP_UP_MAX_AGE_S, True), (STEP_UP_MAX_AGE_S + 1, False)]
)
def test_a_step_up_counts_for_ten_minutes(age_s: int, stepped_up: bool) -> None:
    assert STEP_UP_MAX_AGE_S == 600
    assert principal().stepped_up(now=STEPPED_UP_AT + age_s) is stepped_up


def test_without_otp_in_amr_or_without_auth_time_there_is_no_step_up() -> None:
    assert not principal(amr=("pwd",)).stepped_up(now=STEPPED_UP_AT)
    assert not principal(auth_time=None).stepped_up(now=STEPPED_UP_AT)


def mfa_denied_count() -> float:
    return REGISTRY.get_sample_value("security_events_total", {"event": "mfa.denied"}) or 0.0


def check(who: Principal, now: float) -> None:
    authorize(who, kinds=("user",), roles={"admin"}, scopes=None, step_up=True, now=now)


def test_authorize_accepts_a_recent_step_up_and_refuses_a_stale_one_with_mfa_required() -> None:
    check(principal(), now=STEPPED_UP_AT + STEP_UP_MAX_AGE_S)
    before = mfa_denied_count()
    with pytest.raises(ApiError) as refused:
        check(principal(), now=STEPPED_UP_AT + STEP_UP_MAX_AGE_S + 1)
    assert refused.value.code == "mfa_required"
    assert refused.value.kind.status == 401
    assert "/auth/mfa/step-up" in refused.value.detail
    assert mfa_denied_count() == before + 1


def test_authorize_refuses_a_password_only_token_on_a_step_up_route() -> None:
    with pytest.raises(ApiError) as refused:
        check(principal(amr=("pwd",)), now=STEPPED_UP_AT)
    assert refused.value.code == "mfa_required"
    assert "/auth/mfa/totp/begin" in refused.value.detail
