"""The four APGMS services; each owns one PostgreSQL schema and is built by its own `create_app(settings)`."""
