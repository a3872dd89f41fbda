"""The ``boltlink`` command: serve, consume, migrate and manage API keys.

Subcommands import their runtime lazily so ``boltlink --help`` stays
instant. Expected failures (bad settings, an unreachable backend) exit 1
with one line on stderr; usage errors exit 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import logging.config
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click

from boltlink.errors import BoltLinkError
from boltlink.settings import Settings, unknown_variables

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _fail_cleanly(fn: F) -> F:
    """Turn BoltLink errors into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BoltLinkError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            # A folder or file the settings name that cannot be made or
            # opened: one line naming it, never a traceback.
            where = f": {exc.filename!r}" if exc.filename else ""
            reason = (exc.strerror or str(exc)).lower()
            raise click.ClickException(f"{reason}{where}") from None

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context, *, quiet: bool = False) -> Settings:
    overrides: dict[str, Any] = ctx.find_root().obj or {}
    settings = Settings.from_env(**overrides)
    # One-shot commands print their own result; their INFO lines would only
    # get in its way (-v brings them back).
    if quiet and overrides.get("log_level") is None:
        settings = dataclasses.replace(settings, log_level="WARNING")
    logging.config.dictConfig(_log_config(settings))
    for name in unknown_variables():
        logging.getLogger("boltlink").warning("%s is not a setting; ignored", name)
    return settings


def _log_config(settings: Settings) -> dict[str, Any]:
    from boltlink.logs import logging_config

    return logging_config(
        settings.log_level, settings.log_format, log_probes=settings.access_log_probes
    )


@click.group(context_settings=_CONTEXT)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Data folder of the embedded engines.  "
    "[env: BOLTLINK_DATA_DIR; default: ./boltlink-data]",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.version_option(package_name="boltlink")
@click.pass_context
@_fail_cleanly
def cli(ctx: click.Context, data_dir: str | None, verbose: bool) -> None:
    """BoltLink: a self-hosted URL shortener with exact click analytics."""
    ctx.obj = {"data_dir": data_dir, "log_level": "DEBUG" if verbose else None}
    # Check settings before any subcommand runs, so a bad one is one line.
    Settings.from_env(**ctx.obj)


@cli.command()
@click.option(
    "--host", help="Address to listen on.  [env: BOLTLINK_HOST; default: 127.0.0.1]"
)
@click.option(
    "--port", type=int, help="Port to listen on.  [env: BOLTLINK_PORT; default: 8000]"
)
@click.option(
    "--workers", type=int, help="Worker processes.  [env: BOLTLINK_WORKERS; default: 1]"
)
@click.option(
    "--public-url",
    help="Base of short URLs.  [env: BOLTLINK_PUBLIC_URL; default: http://HOST:PORT]",
)
@click.pass_context
@_fail_cleanly
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    workers: int | None,
    public_url: str | None,
) -> None:
    """Serve redirects and the API.

    In the embedded and mixed profiles it also runs the click consumers.
    """
    options = {"host": host, "port": port, "workers": workers, "public_url": public_url}
    ctx.find_root().obj.update({k: v for k, v in options.items() if v is not None})
    settings = _settings(ctx)
    from boltlink.serve import serve_forever

    serve_forever(settings, _log_config(settings))


def _run_until_signalled(main: Callable[[asyncio.Event], Any]) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def _consumer_command(role: str) -> click.Command:
    @click.option(
        "--consumers",
        type=click.IntRange(1, 64),
        help="Consumers in this process.  [env: BOLTLINK_CONSUMERS]",
    )
    @click.pass_context
    @_fail_cleanly
    def command(ctx: click.Context, consumers: int | None) -> None:
        settings = _settings(ctx)
        if settings.redis_url is None:
            raise click.ClickException(
                f"boltlink {role} needs BOLTLINK_REDIS_URL; in the embedded "
                "profile boltlink serve runs the consumers itself"
            )
        from boltlink.observe import observe_consumers
        from boltlink.workers.run import run_role, tune_collector

        observe_consumers(role, settings)
        tune_collector()
        _run_until_signalled(lambda stop: run_role(role, settings, stop, consumers))

    command.__doc__ = {
        "aggregate": "Fold clicks from the stream into per-link counters.",
        "ingest": "Write clicks from the stream to ClickHouse.",
    }[role]
    return click.command(role)(command)


cli.add_command(_consumer_command("aggregate"))
cli.add_command(_consumer_command("ingest"))


@cli.command()
@click.option("--analytics/--no-analytics", default=True, help="Also ClickHouse.")
@click.pass_context
@_fail_cleanly
def migrate(ctx: click.Context, analytics: bool) -> None:
    """Bring the link store (and ClickHouse) schema up to date."""
    settings = _settings(ctx, quiet=True)
    from boltlink.serve import migrate_all

    for line in migrate_all(settings, analytics=analytics):
        click.echo(line)


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=("links:read", "links:write"),
    show_default=True,
    type=click.Choice(["links:read", "links:write", "analytics:read", "admin"]),
    help="Scope to grant; repeat for several.",
)
@click.pass_context
@_fail_cleanly
def keys_create(ctx: click.Context, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it once, as the last line of stdout."""
    settings = _settings(ctx, quiet=True)
    from boltlink.keycmds import create_key

    key, raw = asyncio.run(create_key(settings, name, scopes))
    click.echo(
        f"created key id={key.id} name={key.name!r} scopes={','.join(key.scopes)}"
    )
    click.echo("store it now: it is shown only once", err=True)
    click.echo(raw)


@keys.command("list")
@click.pass_context
@_fail_cleanly
def keys_list(ctx: click.Context) -> None:
    """List keys (never the keys themselves)."""
    settings = _settings(ctx, quiet=True)
    from boltlink.keycmds import list_keys

    found = asyncio.run(list_keys(settings))
    if not found:
        click.echo(
            "no keys yet: create one with boltlink keys create --name NAME", err=True
        )
        return
    click.echo("id\tprefix\tname\tscopes\tstate")
    for key in found:
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        click.echo(
            f"{key.id}\t{key.prefix}…\t{key.name}\t{','.join(key.scopes)}\t{state}"
        )


@keys.command("revoke")
@click.argument("key_id", type=int)
@click.pass_context
@_fail_cleanly
def keys_revoke(ctx: click.Context, key_id: int) -> None:
    """Revoke the key with id KEY_ID; it stops working at once."""
    settings = _settings(ctx, quiet=True)
    from boltlink.keycmds import revoke_key

    key, already = asyncio.run(revoke_key(settings, key_id))
    if key is None:
        raise click.ClickException(f"no key with id {key_id}")
    if already:
        click.echo(f"key id={key.id} name={key.name!r} was already revoked")
        return
    click.echo(f"revoked key id={key.id} name={key.name!r}")


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect, replay and purge click entries that could not be applied."""


@dead_letters.command("list")
@click.option(
    "--count", type=click.IntRange(1), default=100, show_default=True, help="At most."
)
@click.pass_context
@_fail_cleanly
def dead_letters_list(ctx: click.Context, count: int) -> None:
    """List dead letters, oldest first, one a line."""
    settings = _settings(ctx, quiet=True)
    from boltlink.deadletters import list_dead_letters, run_with_redis

    letters = run_with_redis(
        settings, lambda redis, prefix: list_dead_letters(redis, prefix, count=count)
    )
    for letter in letters:
        click.echo(
            f"{letter.dead_id}\t{letter.group}\t{letter.stream}\t{letter.entry_id}"
            f"\tdeliveries={letter.deliveries}\t{letter.error}"
        )


@dead_letters.command("show")
@click.argument("dead_id")
@click.pass_context
@_fail_cleanly
def dead_letters_show(ctx: click.Context, dead_id: str) -> None:
    """Show the dead letter DEAD_ID with its payload."""
    _check_ids([dead_id])
    settings = _settings(ctx, quiet=True)
    from boltlink.deadletters import run_with_redis, show_dead_letter

    letter = run_with_redis(
        settings, lambda redis, prefix: show_dead_letter(redis, prefix, dead_id)
    )
    if letter is None:
        raise click.ClickException(f"no dead letter with id {dead_id!r}")
    for name in ("dead_id", "stream", "entry_id", "delivered_as", "group"):
        click.echo(f"{name}: {getattr(letter, name)}")
    click.echo(f"deliveries: {letter.deliveries}")
    click.echo(f"error: {letter.error}")
    for key, value in sorted(letter.payload.items()):
        click.echo(f"payload.{key}: {value}")


def _check_ids(dead_ids: list[str]) -> None:
    from boltlink.deadletters import check_dead_ids

    # A malformed id is refused before Redis is asked, in one line.
    try:
        check_dead_ids(dead_ids)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _chosen(dead_ids: tuple[str, ...], every: bool) -> list[str] | None:
    if bool(dead_ids) == every:
        raise click.UsageError("give dead letter ids or --all, not both or neither")
    _check_ids(list(dead_ids))
    return None if every else list(dead_ids)


@dead_letters.command("replay")
@click.argument("dead_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Replay every dead letter.")
@click.pass_context
@_fail_cleanly
def dead_letters_replay(
    ctx: click.Context, dead_ids: tuple[str, ...], every: bool
) -> None:
    """Add dead letters back to their stream, for their own group only."""
    chosen = _chosen(dead_ids, every)
    settings = _settings(ctx, quiet=True)
    from boltlink.deadletters import replay_dead_letters, run_with_redis

    try:
        replayed = run_with_redis(
            settings,
            lambda redis, prefix: replay_dead_letters(redis, prefix, chosen),
        )
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    for letter, new_id in replayed:
        click.echo(
            f"replayed {letter.dead_id} as {new_id} in {letter.stream} "
            f"for group {letter.group}"
        )


@dead_letters.command("purge")
@click.argument("dead_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Delete every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting them all.")
@click.pass_context
@_fail_cleanly
def dead_letters_purge(
    ctx: click.Context, dead_ids: tuple[str, ...], every: bool, yes: bool
) -> None:
    """Delete dead letters for good."""
    chosen = _chosen(dead_ids, every)
    settings = _settings(ctx, quiet=True)
    if chosen is None and not yes:
        click.confirm("delete every dead letter?", abort=True)
    from boltlink.deadletters import purge_dead_letters, run_with_redis

    count = run_with_redis(
        settings, lambda redis, prefix: purge_dead_letters(redis, prefix, chosen)
    )
    click.echo(f"purged {count} dead letters")


def main() -> None:
    """Run the CLI."""
    cli(prog_name="boltlink")


if __name__ == "__main__":  # pragma: no cover
    main()
