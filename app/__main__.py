"""Command line: run the service, load demo data, create organizations, run workers.

python -m app serve [--demo] [--host H] [--port P] [--workers N]
python -m app create-org NAME ADMIN_USERNAME
python -m app demo
python -m app worker
python -m app reencrypt
python -m app migrate
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence

from app.settings import SettingsError, get_settings


class PortTaken(Exception):
    """The port to serve on is held by another program."""


def _check_port(host: str, port: int) -> None:
    """Bind the port once, as the server will: before fresh tokens are printed for a
    server that could never start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortTaken(
                f"port {port} on {host} is in use ({exc.strerror}); stop what holds it, "
                f"or pick another with --port (./scripts/run --port {port + 1})"
            ) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings().require_complete()
    _check_port(args.host, args.port)
    if args.demo:
        from app.demo import print_demo_banner, run_with_demo_data

        banner = asyncio.run(run_with_demo_data(settings, args.host, args.port))
        print_demo_banner(banner)
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        proxy_headers=True,
    )
    return 0


def _create_org(args: argparse.Namespace) -> int:
    from app.demo import create_org_cli

    token = asyncio.run(create_org_cli(get_settings(), args.name, args.admin_username))
    print(token)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import print_demo_banner, run_with_demo_data

    print_demo_banner(asyncio.run(run_with_demo_data(get_settings(), args.host, args.port)))
    return 0


def _worker(_: argparse.Namespace) -> int:
    from app.worker import run_worker_forever

    asyncio.run(run_worker_forever(get_settings()))
    return 0


def _reencrypt(_: argparse.Namespace) -> int:
    from app.demo import reencrypt_cli

    count = asyncio.run(reencrypt_cli(get_settings()))
    print(f"re-encrypted {count} message bodies under the newest key")
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from app.migrate import upgrade_to_head

    asyncio.run(upgrade_to_head(get_settings().effective_database_url))
    print("database is at the newest schema")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m app", description="Messaging service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--demo", action="store_true", help="load demo data and print a token")
    serve.set_defaults(func=_serve)

    create = sub.add_parser("create-org", help="create an organization, print its admin token")
    create.add_argument("name")
    create.add_argument("admin_username")
    create.set_defaults(func=_create_org)

    demo = sub.add_parser("demo", help="load demo data and print tokens")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(func=_demo)

    worker = sub.add_parser("worker", help="run the outbound delivery worker only")
    worker.set_defaults(func=_worker)

    reencrypt = sub.add_parser("reencrypt", help="re-encrypt old bodies under the newest key")
    reencrypt.set_defaults(func=_reencrypt)

    migrate = sub.add_parser("migrate", help="alembic upgrade head")
    migrate.set_defaults(func=_migrate)

    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except (SettingsError, PortTaken) as exc:
        # One line a newcomer can act on, not a traceback.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
