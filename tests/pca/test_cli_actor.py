"""Who a local command's events name: the user, or the uid where the system knows no name (a container)."""

from __future__ import annotations

import getpass
import os

import pytest

from pca.cli.common import cli_actor


def test_the_actor_is_the_user_and_each_command_gets_its_own_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    first, second = cli_actor("import"), cli_actor("import")
    assert first.name == second.name == "cli:alice"
    assert first.request_id.startswith("import-") and first.request_id != second.request_id


def test_a_uid_without_a_name_is_named_by_its_number(monkeypatch: pytest.MonkeyPatch) -> None:
    def nameless() -> str:
        raise KeyError("getpwuid(): uid not found: 12345")

    monkeypatch.setattr(getpass, "getuser", nameless)
    assert cli_actor("issuer-add").name == f"cli:{os.getuid()}"
