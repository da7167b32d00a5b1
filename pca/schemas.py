"""Every component's schema, for each backend: the process layer migrates them all.

The domain's components are listed by ``revocation``; the response store, which
``revocation`` may not import, owns its own and is added here. The order is the
order of the single schema they replace: log, projection, response store, coordination.
"""

from __future__ import annotations

from responders.store.postgres import STORE_SCHEMA as PG_STORE_SCHEMA
from responders.store.sqlite import STORE_SCHEMA as SQLITE_STORE_SCHEMA
from revocation.storage.postgres.coordination import COORDINATION_SCHEMA as PG_COORDINATION_SCHEMA
from revocation.storage.postgres.log import LOG_SCHEMA as PG_LOG_SCHEMA
from revocation.storage.postgres.projection import PROJECTION_SCHEMA as PG_PROJECTION_SCHEMA
from revocation.storage.schema import Schema
from revocation.storage.sqlite.coordination import COORDINATION_SCHEMA
from revocation.storage.sqlite.log import LOG_SCHEMA
from revocation.storage.sqlite.projection import PROJECTION_SCHEMA

SQLITE_SCHEMAS: tuple[Schema, ...] = (LOG_SCHEMA, PROJECTION_SCHEMA, SQLITE_STORE_SCHEMA, COORDINATION_SCHEMA)
PG_SCHEMAS: tuple[Schema, ...] = (PG_LOG_SCHEMA, PG_PROJECTION_SCHEMA, PG_STORE_SCHEMA, PG_COORDINATION_SCHEMA)
