"""``zart-toxiproxy``: the kit's toxiproxy server as a command, until SIGTERM or SIGINT.

Options mirror the real ``toxiproxy-server`` (host, port, a config file of proxies, a seed).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import click

from .server import ApiError, ToxiproxyServer


async def serve(host: str, port: int, proxies: object, seed: int | None) -> None:
    """Serve until a stop signal; the first line on stderr gives the API's URL."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with ToxiproxyServer(host, port, seed=seed) as server:
            if proxies is not None:
                await server.populate(proxies)
            click.echo(f"toxiproxy API listening on {server.url}", err=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the API.")
@click.option("--port", default=8474, show_default=True, type=int, help="Port of the API (0: any).")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON list of proxies to create at start, as POST /populate takes.",
)
@click.option("--seed", type=int, default=None, help="Seed of the toxicity and jitter rolls.")
def main(host: str, port: int, config: Path | None, seed: int | None) -> None:
    """Serve the toxiproxy v2 HTTP API and its proxies."""
    try:
        proxies = json.loads(config.read_text()) if config is not None else None
        asyncio.run(serve(host, port, proxies, seed))
    except (ApiError, ValueError) as exc:
        click.echo(f"zart-toxiproxy: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"zart-toxiproxy: error: cannot serve on {host}:{port}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
