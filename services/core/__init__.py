"""The core service: bank lines, alerts, BAS, obligations and designated accounts."""
