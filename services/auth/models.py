"""Request and response bodies of the auth service; they validate requests and document `/openapi.json`.

Roles come from `shared.roles` and page queries from `shared.pagination`, which every service shares."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from services.auth.emails import EMAIL_MAX_CHARS, canonical_email
from services.auth.passwords import MIN_PASSWORD_CHARS
from shared.roles import Role

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$"
# Long passphrases are welcome; past this a request is an attempt to make argon2 hash megabytes.
MAX_PASSWORD_CHARS = 1024
# A refresh token is 32 random bytes, base64url (43 characters); the bounds only keep junk out of the lookup.
MIN_REFRESH_TOKEN_CHARS = 20
MAX_REFRESH_TOKEN_CHARS = 200
# A TOTP code is 6 digits and a recovery code 14 characters; anything longer is refused before any lookup.
MAX_STEP_UP_CODE_CHARS = 64
TOTP_CODE_PATTERN = r"^[0-9]{6}$"


def _canonical_if_text(value: Any) -> Any:
    # Anything but a string goes on to pydantic's own type error.
    return canonical_email(value) if isinstance(value, str) else value


# Canonicalised (services/auth/emails.py) before the shape is checked, so ` Ann@Example.com` and its fullwidth
# spelling are one address, and anything the rule refuses is a 400 naming the field.
Email = Annotated[str, BeforeValidator(_canonical_if_text), Field(pattern=EMAIL_PATTERN, max_length=EMAIL_MAX_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class LoginRequest(Strict):
    email: Email
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)
    org_id: uuid.UUID | None = Field(
        default=None, description="Only when the address has accounts in several orgs: the org to log in to"
    )


class RefreshRequest(Strict):
    refresh_token: str = Field(min_length=MIN_REFRESH_TOKEN_CHARS, max_length=MAX_REFRESH_TOKEN_CHARS)


class UserSummary(BaseModel):
    id: str
    org_id: str
    role: Role
    mfa_enrolled: bool


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None = None
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int
    user: UserSummary | None = None


class Me(UserSummary):
    email: str
    amr: list[str]
    auth_time: int | None


class CreateUserRequest(Strict):
    email: Email
    password: str = Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
    role: Role


class UserListItem(BaseModel):
    id: str
    email: str
    role: Role
    mfa_enrolled: bool
    created_at: str


class UserPage(BaseModel):
    items: list[UserListItem]
    next_cursor: str | None


class UpdateUserRequest(Strict):
    role: Role | None = Field(default=None, description="The new role; the user's access tokens stop working")
    disabled: StrictBool | None = Field(
        default=None, description="true: the user can no longer log in, and their tokens stop working; false: again"
    )

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateUserRequest:
        if self.role is None and self.disabled is None:
            raise ValueError("give role, disabled or both")
        return self


class UpdatedUser(BaseModel):
    id: str
    org_id: str
    role: Role
    disabled: bool


class TotpBeginRequest(Strict):
    password: str = Field(
        min_length=1,
        max_length=MAX_PASSWORD_CHARS,
        description="The account's password, entered again: an access token alone cannot enrol an authenticator",
    )


class TotpBeginResponse(BaseModel):
    secret: str
    otpauth_uri: str


class TotpConfirmRequest(Strict):
    code: str = Field(pattern=TOTP_CODE_PATTERN, description="The 6-digit code the authenticator shows now")


class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(description="Shown once; each code works once")


class StepUpRequest(Strict):
    code: str = Field(
        min_length=1, max_length=MAX_STEP_UP_CODE_CHARS, description="A 6-digit TOTP code or a recovery code"
    )
