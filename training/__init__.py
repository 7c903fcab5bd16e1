"""Reproducible training of the bundled predictive-text model (not part of the installed package)."""
