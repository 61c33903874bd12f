"""The auth service: users, tokens, MFA and API clients."""
