"""Run the ``boltlink`` command as a user would, in a subprocess each time."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The pg_schema fixture skips a test when this is unset.
POSTGRES_URL = os.environ.get("BOLTLINK_TEST_DATABASE_URL", "")
_UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/x"


def _env(**settings: str) -> dict[str, str]:
    """Return this process's environment without BOLTLINK_*, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}
    env.update({f"BOLTLINK_{name.upper()}": value for name, value in settings.items()})
    return env


def _boltlink(
    cwd: Path, *args: str, timeout: float = 60.0, **settings: str
) -> subprocess.CompletedProcess[str]:
    """Run ``boltlink ARGS`` in ``cwd`` with only ``settings`` set."""
    return subprocess.run(
        [sys.executable, "-m", "boltlink", *args],
        cwd=cwd,
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _create_key(cwd: Path, **settings: str) -> tuple[int, str]:
    """Create a key named demo; return its id and the raw key."""
    result = _boltlink(
        cwd,
        "keys",
        "create",
        "--name",
        "demo",
        "--scope",
        "links:read",
        "--scope",
        "links:write",
        **settings,
    )
    assert result.returncode == 0, result.stderr
    first, raw = result.stdout.splitlines()
    found = re.fullmatch(
        r"created key id=(\d+) name='demo' scopes=links:read,links:write", first
    )
    assert found is not None, first
    return int(found[1]), raw


# -- help and usage -----------------------------------------------------------


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = _boltlink(tmp_path, "--help")

    assert result.returncode == 0
    commands = re.findall(r"^  (\w+)  ", result.stdout, flags=re.MULTILINE)
    assert commands == ["aggregate", "ingest", "keys", "migrate", "serve"]
    assert result.stderr == ""


def test_keys_create_without_name_is_a_usage_error(tmp_path: Path) -> None:
    result = _boltlink(tmp_path, "keys", "create", data_dir=str(tmp_path / "data"))

    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "Error: Missing option '--name'."
    assert not (tmp_path / "data").exists()


# -- expected failures: one line, exit 1 ----------------------------------------

_BAD_SETTINGS = [
    ("port", "abc", "BOLTLINK_PORT must be an integer, got 'abc'"),
    ("port", "70000", "BOLTLINK_PORT must be between 1 and 65535, got 70000"),
    ("workers", "0", "BOLTLINK_WORKERS must be between 1 and 256, got 0"),
    ("port", " 80", "BOLTLINK_PORT must be an integer, got ' 80'"),
    ("port", "8_0", "BOLTLINK_PORT must be an integer, got '8_0'"),
    (
        "redis_prefix",
        "",
        "BOLTLINK_REDIS_PREFIX must be 1 to 64 letters, digits or _.:-{}, got ''",
    ),
    (
        "redis_prefix",
        "a b",
        "BOLTLINK_REDIS_PREFIX must be 1 to 64 letters, digits or _.:-{}, got 'a b'",
    ),
    (
        "public_url",
        "http://[::1",
        "BOLTLINK_PUBLIC_URL must be an absolute http(s) URL, got 'http://[::1'",
    ),
    (
        "public_url",
        "http://x:99999",
        "BOLTLINK_PUBLIC_URL must be an absolute http(s) URL, got 'http://x:99999'",
    ),
    (
        "public_url",
        "https://u:pw@go.example",
        "BOLTLINK_PUBLIC_URL must not carry user info, got 'https://u:pw@go.example'",
    ),
    (
        "database_url",
        "mysql://x",
        "BOLTLINK_DATABASE_URL must start with one of postgresql://, "
        "postgres://, sqlite://, got 'mysql://x'",
    ),
    (
        "redis_url",
        "http://x",
        "BOLTLINK_REDIS_URL must start with one of redis://, rediss://, "
        "unix://, got 'http://x'",
    ),
    (
        "public_url",
        "ftp://x",
        "BOLTLINK_PUBLIC_URL must be an absolute http(s) URL, got 'ftp://x'",
    ),
    (
        "log_level",
        "loud",
        "BOLTLINK_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'",
    ),
]


@pytest.mark.parametrize("command", [["serve"], ["keys", "list"]])
@pytest.mark.parametrize(("name", "value", "message"), _BAD_SETTINGS)
def test_bad_setting_stops_command_with_one_line(
    tmp_path: Path, command: list[str], name: str, value: str, message: str
) -> None:
    settings = {"data_dir": str(tmp_path / "data"), name: value}

    result = _boltlink(tmp_path, *command, timeout=30.0, **settings)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"Error: {message}"]
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["serve"], ["keys", "list"]])
def test_data_folder_that_cannot_be_made_stops_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    result = _boltlink(tmp_path, *command, timeout=30.0, data_dir=str(blocker))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"Error: file exists: {str(blocker)!r}"]


@pytest.mark.parametrize(
    "command", [["serve"], ["keys", "list"], ["migrate", "--no-analytics"]]
)
def test_unreachable_postgres_stops_command_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    result = _boltlink(
        tmp_path,
        *command,
        timeout=30.0,
        data_dir=str(tmp_path / "data"),
        database_url=_UNREACHABLE_POSTGRES,
    )

    # serve logs the embedded Valkey's start first; the error is one line.
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: postgres '127.0.0.1:1/x' unavailable: connection failed: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )
    assert "Traceback" not in result.stderr


def test_misspelt_variable_is_named_in_a_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLTLINK_")}
    env |= {"BOLTLINK_DATA_DIR": str(tmp_path / "data"), "BOLTLINK_PORTT": "9"}
    env |= {"BOLTLINK_TEST_REDIS_URL": "redis://127.0.0.1:1/0"}

    result = subprocess.run(
        [sys.executable, "-m", "boltlink", "keys", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0].endswith(
        "WARNING boltlink: BOLTLINK_PORTT is not a setting; ignored"
    )
    assert len(result.stderr.splitlines()) == 2


def test_unreachable_clickhouse_stops_migrate_with_one_line(tmp_path: Path) -> None:
    result = _boltlink(
        tmp_path,
        "migrate",
        timeout=30.0,
        data_dir=str(tmp_path / "data"),
        clickhouse_url="http://default:secret@127.0.0.1:1/default",
    )

    assert result.returncode == 1
    assert result.stdout == "link store: 1 migrations applied\n"
    assert result.stderr.splitlines() == [
        "Error: cannot reach clickhouse at 127.0.0.1:1: connection refused"
    ]


@pytest.mark.parametrize("role", ["aggregate", "ingest"])
def test_consumer_without_redis_url_stops_with_one_line(
    tmp_path: Path, role: str
) -> None:
    result = _boltlink(tmp_path, role, data_dir=str(tmp_path / "data"))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: boltlink {role} needs BOLTLINK_REDIS_URL; in the embedded "
        "profile boltlink serve runs the consumers itself"
    ]


# -- API keys -------------------------------------------------------------------


def _assert_key_lifecycle(cwd: Path, **settings: str) -> None:
    """Create, list, revoke and list again; never show the raw key."""
    empty = _boltlink(cwd, "keys", "list", **settings)
    assert (empty.returncode, empty.stdout) == (0, "")
    assert empty.stderr.splitlines()[-1] == (
        "no keys yet: create one with boltlink keys create --name NAME"
    )
    key_id, raw = _create_key(cwd, **settings)
    assert re.fullmatch(r"blk_[A-Za-z0-9_-]{43,}", raw), raw

    listed = _boltlink(cwd, "keys", "list", **settings)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == (
        "id\tprefix\tname\tscopes\tstate\n"
        f"{key_id}\t{raw[:10]}…\tdemo\tlinks:read,links:write\tactive\n"
    )
    assert raw not in listed.stdout + listed.stderr

    revoked = _boltlink(cwd, "keys", "revoke", str(key_id), **settings)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == f"revoked key id={key_id} name='demo'\n"
    again = _boltlink(cwd, "keys", "revoke", str(key_id), **settings)
    assert (again.returncode, again.stdout) == (
        0,
        f"key id={key_id} name='demo' was already revoked\n",
    )

    listed = _boltlink(cwd, "keys", "list", **settings)
    assert re.fullmatch(
        r"id\tprefix\tname\tscopes\tstate\n"
        rf"{key_id}\t{re.escape(raw[:10])}…\tdemo\tlinks:read,links:write"
        r"\trevoked \d{4}-\d{2}-\d{2}\n",
        listed.stdout,
    ), listed.stdout

    unknown = _boltlink(cwd, "keys", "revoke", str(key_id + 1000), **settings)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[-1] == f"Error: no key with id {key_id + 1000}"
    assert "Traceback" not in unknown.stderr


def test_keys_lifecycle_on_embedded_store(tmp_path: Path) -> None:
    _assert_key_lifecycle(tmp_path, data_dir=str(tmp_path / "data"))


def test_keys_create_stores_only_the_digest(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    _, raw = _create_key(tmp_path, data_dir=str(data_dir))

    files = sorted(data_dir.glob("boltlink.sqlite3*"))
    stored = b"".join(path.read_bytes() for path in files)
    assert hashlib.sha256(raw.encode()).hexdigest().encode() in stored
    assert raw.encode() not in stored
    assert raw[4:].encode() not in stored


@pytest.mark.postgres
def test_keys_lifecycle_on_postgres(tmp_path: Path, pg_schema: str) -> None:
    settings = {
        "data_dir": str(tmp_path / "data"),
        "database_url": POSTGRES_URL,
        "database_schema": pg_schema,
    }
    migrated = _boltlink(tmp_path, "migrate", "--no-analytics", **settings)
    assert migrated.returncode == 0, migrated.stderr
    assert re.fullmatch(r"link store: [1-9]\d* migrations applied\n", migrated.stdout)

    _assert_key_lifecycle(tmp_path, **settings)


def test_serve_on_taken_port_stops_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _boltlink(tmp_path, "serve", "--port", str(port))

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port}: address already in use"
    )


def test_serve_refuses_a_data_folder_held_by_another(tmp_path: Path) -> None:
    import fcntl
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "serve.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        result = _boltlink(tmp_path, "serve", "--port", str(port), data_dir=str(data))

    assert result.returncode == 1
    assert "is in use by another boltlink serve" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_relative_chdb_url_stops_with_one_line(tmp_path: Path) -> None:
    result = _boltlink(tmp_path, "migrate", clickhouse_url="chdb://relative/x")

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: BOLTLINK_CLICKHOUSE_URL must name an absolute chDB folder "
        "(chdb:///abs/path), got 'chdb://relative/x'"
    )
