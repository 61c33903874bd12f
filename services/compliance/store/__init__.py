"""SQL of the compliance schema, one module per table group (the audit trail itself is `shared.audit`'s)."""
