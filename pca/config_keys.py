"""Which keys and tables a configuration file may hold: exactly those its loader reads.

The loader is run once on an empty file with a table that notes every key asked of it,
so a setting is known as soon as the loader reads it, and listed nowhere else. A key
read only under some condition would be missed: the loader reads every key, with its
default, whatever the other values.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

Schema = Mapping[str, frozenset[str]]  # table ("" the top level, "crl.store" a sub-table) -> its keys


class TracedTable(dict[str, Any]):
    """A table that notes every key asked for with ``get`` and every sub-table opened with ``table``."""

    def __init__(self, data: dict[str, Any], name: str, seen: dict[str, set[str]]) -> None:
        super().__init__(data)
        self.name = name
        self._seen = seen
        seen.setdefault(name, set())

    def get(self, key: str, default: Any = None) -> Any:
        self._seen[self.name].add(key)
        return super().get(key, default)

    def table(self, key: str, value: dict[str, Any]) -> TracedTable:
        return TracedTable(value, f"{self.name}.{key}" if self.name else key, self._seen)


def trace_schema(load: Callable[[dict[str, Any]], object]) -> Schema:
    """The tables and keys ``load`` reads from an empty document."""
    seen: dict[str, set[str]] = {}
    load(TracedTable({}, "", seen))
    return {name: frozenset(keys) for name, keys in seen.items()}


def unknown_keys(data: dict[str, Any], schema: Schema) -> list[str]:
    """A message for each key and table of ``data`` not in ``schema``, with the closest known one:
    ``unknown key crl.shard (did you mean crl.shards?)``, ``unknown table [crl.stor] (did you mean [crl.store]?)``."""
    wrong: list[str] = []

    def walk(table: dict[str, Any], name: str) -> None:
        for key, value in table.items():
            full = f"{name}.{key}" if name else key
            if key in schema[name]:
                if isinstance(value, dict) and full in schema:
                    walk(value, full)
                continue
            what = f"unknown table [{full}]" if isinstance(value, dict) else f"unknown key {full}"
            guess = _closest(schema, name, key)
            wrong.append(f"{what} (did you mean {f'[{guess}]' if guess in schema else guess}?)" if guess else what)

    walk(data, "")
    return wrong


def _closest(schema: Schema, name: str, key: str) -> str:
    """The known key (``table.key``) or table that ``key`` in table ``name`` was most likely meant to be."""
    every = {f"{t}.{k}" if t else k: k for t, keys in schema.items() for k in keys}
    elsewhere = sorted(full for full, k in every.items() if k == key)
    if elsewhere:  # the right key in the wrong table
        return elsewhere[0]
    near = difflib.get_close_matches(key, schema[name], n=1)
    if near:
        return f"{name}.{near[0]}" if name else near[0]
    near = difflib.get_close_matches(key, set(every.values()), n=1, cutoff=0.75)  # misspelt in the wrong table
    return min(full for full, k in every.items() if k == near[0]) if near else ""
