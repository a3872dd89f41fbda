"""Revoke an API key with the CLI while real serve processes hold it cached."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.test_serve import _boltlink, _create_key, _Servers, production, servers

__all__ = ["production", "servers"]

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _key_id(cwd: Path, settings: dict[str, str]) -> int:
    listed = _boltlink(cwd, settings, "keys", "list").splitlines()
    return int(listed[-1].split("\t")[0])


def test_key_revoked_by_the_cli_is_refused_by_both_workers_at_once(
    tmp_path: Path, servers: _Servers, production: dict[str, str]
) -> None:
    settings = {**production, "inprocess_workers": "false"}
    settings.pop("clickhouse_url")
    workers = [servers.serve(name, settings) for name in ("first", "second")]
    clients = [httpx.Client(base_url=worker.base_url) for worker in workers]
    try:
        for _ in range(3):
            headers = {"Authorization": f"Bearer {_create_key(tmp_path, settings)}"}
            key_id = _key_id(tmp_path, settings)
            # Each worker reads the key once and keeps it.
            for client in clients:
                for _ in range(3):
                    got = client.get("/api/v1/links", headers=headers)
                    assert got.status_code == 200, got.text

            revoked = _boltlink(tmp_path, settings, "keys", "revoke", str(key_id))

            assert revoked == f"revoked key id={key_id} name='e2e'\n"
            for client in clients:
                got = client.get("/api/v1/links", headers=headers)
                assert (got.status_code, got.json()["code"]) == (401, "unauthorized")
    finally:
        for client in clients:
            client.close()
