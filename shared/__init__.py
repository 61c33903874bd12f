"""The common package every APGMS service and the proxy import. Services never import each other."""
