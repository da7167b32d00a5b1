"""OCSP responders: request parsing and pre-signed responses."""
