"""Errors Sift raises on purpose.

    SiftError
    └── KnownError                 shown to the user as a message, never as a crash report
        ├── ModelError             a model cannot be found, checked, exported or loaded
        │   ├── ModelNotInstalled  its package or file is missing
        │   ├── ModelIntegrityError  its bytes do not match the pinned sha256
        │   └── UnsupportedModel   a folder or file that Sift cannot load as a model
        ├── IngestError            one file cannot be added; the others go on
        │   ├── UnsupportedFile    a type Sift does not read
        │   ├── EncryptedFile      needs a password
        │   ├── DamagedFile        cannot be parsed (broken, truncated, zero pages, no rows)
        │   └── FileTimeout        parsing took longer than the per-file limit
        ├── StoreError             a knowledge base cannot be opened or written
        └── Cancelled              the user cancelled long work

Anything else that escapes is a bug and belongs in a crash report.
"""
from __future__ import annotations

__all__ = [
    "SiftError",
    "KnownError",
    "ModelError",
    "ModelNotInstalled",
    "ModelIntegrityError",
    "UnsupportedModel",
    "IngestError",
    "UnsupportedFile",
    "EncryptedFile",
    "DamagedFile",
    "FileTimeout",
    "StoreError",
    "Cancelled",
]


class SiftError(Exception):
    """Base of every error Sift raises deliberately."""


class KnownError(SiftError):
    """An expected failure with a message a person can act on.

    ``fix`` is an optional one-line suggestion shown beside the message.
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:  # message, then the fix on its own line
        base = super().__str__()
        return f"{base}\n  fix: {self.fix}" if self.fix else base


class ModelError(KnownError):
    """A model cannot be found, checked, exported or loaded."""


class ModelNotInstalled(ModelError):
    """The package or file that carries a model is missing."""


class ModelIntegrityError(ModelError):
    """A model file's sha256 differs from the pinned one."""


class UnsupportedModel(ModelError):
    """A folder or file that is not a model Sift can load."""


class IngestError(KnownError):
    """One file cannot be added. The message starts with the file's path."""

    def __init__(self, path: str, reason: str, *, fix: str | None = None) -> None:
        super().__init__(f"{path}: {reason}", fix=fix)
        self.path = path
        self.reason = reason

    def __reduce__(self):  # picklable across the parse worker's process boundary
        return (type(self), (self.path, self.reason), {"fix": self.fix})


class UnsupportedFile(IngestError):
    """A file type Sift does not read."""


class EncryptedFile(IngestError):
    """A file that needs a password."""


class DamagedFile(IngestError):
    """A file that cannot be parsed: broken, truncated, zero pages, no rows."""


class FileTimeout(IngestError):
    """Parsing a file took longer than the per-file limit."""


class StoreError(KnownError):
    """A knowledge base cannot be opened or written."""


class Cancelled(KnownError):
    """Long work stopped because the user asked it to."""
