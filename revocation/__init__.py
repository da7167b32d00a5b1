"""Revocation and status infrastructure for a private CA: domain and control plane."""

__version__ = "0.1.0"
