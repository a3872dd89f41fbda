"""Test how the shared clients open, and what they say when they cannot."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from boltlink import analytics
from boltlink.backends import chdb_open_error, connect_clickhouse
from boltlink.errors import BackendUnavailable
from boltlink.settings import Settings

# What chdb 4.4 prints on stderr, and raises, for a folder it cannot open.
_RAISED = (
    "Unable to open the chdb engine at '/d/chdb': Failed to create connection: "
    "Code: 36. DB::Exception: Error initializing EmbeddedServer: . (BAD_ARGUMENTS)"
)
_READ_ONLY = (
    "Code: 76. DB::ErrnoException: Cannot open file /d/chdb/status: , errno: 30, "
    "strerror: Read-only file system. (CANNOT_OPEN_FILE)\n"
)
_LOCKED = (
    "Code: 76. DB::Exception: Cannot lock file /d/chdb/status. Another server "
    "instance in same directory is already running. (CANNOT_OPEN_FILE)\n"
)
_BUSY = (
    "chDB folder '/d/chdb' is in use by another process (is boltlink serve "
    "running on it?); chDB allows one process per folder"
)

_CONNECT = """
import sys
from boltlink.backends import connect_clickhouse
from boltlink.settings import Settings
settings = Settings.from_env({}, clickhouse_url="chdb://" + sys.argv[1])
try:
    connect_clickhouse(settings)
except Exception as exc:
    print(exc)
"""


def _settings(folder: Path) -> Settings:
    return Settings.from_env(
        {}, data_dir=folder.parent, clickhouse_url=f"chdb://{folder}"
    )


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        (
            _READ_ONLY,
            "cannot open chDB folder '/d/chdb': Cannot open file /d/chdb/status: , "
            "errno: 30, strerror: Read-only file system. (CANNOT_OPEN_FILE)",
        ),
        (_LOCKED, _BUSY),
        (
            "",
            "cannot open chDB folder '/d/chdb': Error initializing EmbeddedServer: ."
            " (BAD_ARGUMENTS)",
        ),
        (
            "starting\n" + _READ_ONLY + "Stack trace follows\n",
            "cannot open chDB folder '/d/chdb': Cannot open file /d/chdb/status: , "
            "errno: 30, strerror: Read-only file system. (CANNOT_OPEN_FILE)",
        ),
    ],
)
def test_chdb_open_error_names_the_reason_chdb_gave(
    printed: str, expected: str
) -> None:
    assert str(chdb_open_error("/d/chdb", printed, _RAISED)) == expected


def test_chdb_folder_whose_status_is_a_folder_is_not_in_use(tmp_path: Path) -> None:
    # Root ignores permissions: a folder where chDB's status file belongs
    # is a failure chDB reports for anyone.
    folder = tmp_path / "chdb"
    (folder / "status").mkdir(parents=True)

    with pytest.raises(BackendUnavailable) as caught:
        connect_clickhouse(_settings(folder))

    assert str(caught.value) == (
        f"cannot open chDB folder '{folder}': Cannot open file {folder}/status: , "
        "errno: 21, strerror: Is a directory. (CANNOT_OPEN_FILE)"
    )


def test_chdb_folder_below_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    folder = tmp_path / "data" / "chdb"

    with pytest.raises(BackendUnavailable) as caught:
        connect_clickhouse(_settings(folder))

    assert str(caught.value) == f"cannot create chDB folder '{folder}': not a directory"


def test_chdb_folder_held_by_another_process_is_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "chdb"
    held = analytics.acquire(_settings(folder))
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CONNECT, str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        analytics.release(held)

    assert result.stdout == _BUSY.replace("/d/chdb", str(folder)) + "\n"


def test_chdb_folder_on_a_read_only_mount_says_read_only(tmp_path: Path) -> None:
    # A user and mount namespace of its own (unshare -rm) lets the test make
    # a read-only bind mount, which stops root too.
    folder = tmp_path / "ro" / "chdb"
    held = analytics.acquire(_settings(folder))
    analytics.release(held)
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mount = f"mount --bind -o ro {folder.parent} {folder.parent}"
    remount = f"mount -o remount,bind,ro {folder.parent}"
    script = f"{mount} && {remount} && exec {sys.executable} -c '{_CONNECT}' {folder}"
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.skip(f"no read-only mount here: {result.stderr.strip()[:200]}")

    assert result.stdout == (
        f"cannot open chDB folder '{folder}': Cannot open file {folder}/status: , "
        "errno: 30, strerror: Read-only file system. (CANNOT_OPEN_FILE)\n"
    )
    assert result.stderr == ""
