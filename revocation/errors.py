"""The project's errors: one base, a few domain errors, I/O errors wrap their cause."""

from __future__ import annotations


class PCAError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PCAError):
    """The configuration (file, flags, constructor arguments) is wrong."""


class KeyBackendError(PCAError):
    """A signing key cannot be opened or does not match its certificate."""


class ValidationError(PCAError):
    """A request's content is invalid (bad reason, malformed serial, bad CSR...)."""


class NotFoundError(PCAError):
    """The thing asked for does not exist (unknown serial, unknown issuer)."""


class ConflictError(PCAError):
    """The request contradicts the current state (revoked with another reason...)."""


class ConcurrencyError(PCAError):
    """Optimistic concurrency failed: the stream moved on since it was read."""


class IntegrityError(PCAError):
    """Stored data breaks an invariant (a broken hash chain, an event out of order)."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class StorageError(PCAError):
    """A storage backend failed; wraps the backend's own error."""
