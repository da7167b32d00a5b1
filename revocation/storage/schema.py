"""What each storage component declares about its tables, for either backend to migrate.

The log, the projection, coordination and the response store each own their tables and
migrate them (``revocation.storage.sqlite.db.SQLiteDatabase.migrate_sync``,
``revocation.storage.postgres.db.migrate_schema``); versions are counted per owner
and recorded as (owner, version) in ``schema_versions``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Schema:
    """The tables one component owns, as versioned migrations; each runs once, in order.

    ``legacy`` maps the versions of the single schema every table once shared (recorded in
    ``schema_migrations`` before each owner migrated its own) to this owner's versions they
    covered, so a database made then is recognised as already at those versions.
    """

    owner: str
    migrations: tuple[tuple[int, str], ...]
    legacy: Mapping[int, int] = dataclasses.field(default_factory=dict)
