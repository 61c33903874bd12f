"""The compliance service: compliance reports, evidence packs, monitoring snapshots and the audit trail."""
