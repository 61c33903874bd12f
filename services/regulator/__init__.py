"""The regulator service: the regulator API and HTML portal."""
