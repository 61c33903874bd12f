"""The routing proxy: one public port (3000) in front of auth, core, compliance and regulator."""
