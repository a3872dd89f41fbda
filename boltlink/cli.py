"""The ``boltlink`` command: serve, consume, migrate and manage API keys.

Subcommands import their runtime lazily so ``boltlink --help`` stays
instant. Expected failures (bad settings, an unreachable backend) exit 1
with one line on stderr; usage errors exit 2.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import logging.config
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click

from boltlink.errors import BoltLinkError
from boltlink.settings import Settings

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

    return wrapper  # type: ignore[return-value]


def _settings(ctx: click.Context) -> Settings:
    overrides: dict[str, Any] = ctx.find_root().obj or {}
    settings = Settings.from_env(**overrides)
    logging.config.dictConfig(_log_config(settings))
    return settings


def _log_config(settings: Settings) -> dict[str, Any]:
    from boltlink.logs import logging_config

    return logging_config(settings.log_level, settings.log_format)


@click.group(context_settings=_CONTEXT)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder.")
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
@click.option("--host", help="Address to listen on.  [env: BOLTLINK_HOST]")
@click.option("--port", type=int, help="Port to listen on.  [env: BOLTLINK_PORT]")
@click.option("--workers", type=int, help="Worker processes.  [env: BOLTLINK_WORKERS]")
@click.option("--public-url", help="Base of short URLs.  [env: BOLTLINK_PUBLIC_URL]")
@click.pass_context
@_fail_cleanly
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    workers: int | None,
    public_url: str | None,
) -> None:
    """Serve redirects and the API (and, embedded, the click consumers)."""
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
        from boltlink.workers.run import run_role

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
    settings = _settings(ctx)
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
    settings = _settings(ctx)
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
    settings = _settings(ctx)
    from boltlink.keycmds import list_keys

    for key in asyncio.run(list_keys(settings)):
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
    settings = _settings(ctx)
    from boltlink.keycmds import revoke_key

    key = asyncio.run(revoke_key(settings, key_id))
    if key is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"revoked key id={key.id} name={key.name!r}")


def main() -> None:
    """Run the CLI."""
    cli(prog_name="boltlink")


if __name__ == "__main__":  # pragma: no cover
    main()
