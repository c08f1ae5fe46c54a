"""The ``relay`` command: ``serve`` and ``user``; every subcommand takes ``--data`` / ``RELAY_DATA``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from .agent.config import AgentConfigError
from .catalogue import AlreadyExists, Catalogue, CatalogueUnavailable, NotFound
from .config import HELP, ConfigError, Settings, load_settings
from .logs import setup_logging
from .passwords import MIN_LENGTH


class CommandError(Exception):
    """Ends the command with this message on stderr and exit status 1."""


def shown_default(name: str) -> str:
    """A setting's default as ``--help`` shows it: every one, 0 and empty too (the help text says
    what empty means)."""
    default = getattr(Settings(), name)
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default).replace("%", "%%")  # argparse formats help with %


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help=f"{HELP['data']} (RELAY_DATA; default: "
                                       f"{shown_default('data')})")
    parser.add_argument("--config", help="TOML settings file (RELAY_CONFIG)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Cloud monitor relay.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API, /admin, player pages and files")
    demo = commands.add_parser("demo", help="serve, plus a demo agent with a demo camera")
    for server in (serve, demo):
        _common(server)
        for field in dataclasses.fields(Settings):
            if field.name != "data":
                server.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                                    help=f"{HELP[field.name]} (RELAY_{field.name.upper()}; "
                                         f"default: {shown_default(field.name)})")

    agent = commands.add_parser("agent", help="run the reference gatherer agent")
    agent.add_argument("--server", required=True,
                       help="the relay's URL, e.g. http://relay:8080; several nodes: comma-separated "
                            "(tried in turn from a random one)")
    agent.add_argument("--key", help="agent key (or RELAY_AGENT_KEY, which keeps it out of ps)")
    agent.add_argument("--config", help="agent TOML file: its name, MAC and IP cameras")
    agent.add_argument("--data", help="where the agent keeps its state (RELAY_DATA; default "
                                      "./agent-data)")
    agent.add_argument("--demo-video", help="make a demo MP4 at this path on first start")
    agent.add_argument("--log-level", default=os.environ.get("RELAY_LOG_LEVEL", "info"))

    keys = commands.add_parser("agent-key", help="manage the keys agents log in with")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_add = key_actions.add_parser("add", help="create a key and print it (shown once)")
    key_add.add_argument("name")
    key_add.add_argument("--gatherers", type=int, default=1, metavar="N",
                         help="how many gatherers (agent machines) the key may register (default 1)")
    key_revoke = key_actions.add_parser("revoke", help="refuse this key from now on")
    key_revoke.add_argument("name")
    key_limit = key_actions.add_parser("limit", help="set how many gatherers the key may register")
    key_limit.add_argument("name")
    key_limit.add_argument("gatherers", type=int, metavar="N")
    key_rebind = key_actions.add_parser(
        "rebind", help="give a gatherer to this key; its next hello may come from new hardware "
                       "(a new MAC), which then takes the gatherer over with its cameras")
    key_rebind.add_argument("name")
    key_rebind.add_argument("gather_id", type=int, metavar="GATHER_ID")
    key_list = key_actions.add_parser("list", help="list keys: name, state, gatherers owned")
    for sub in (key_add, key_revoke, key_limit, key_rebind, key_list):
        _common(sub)

    status = commands.add_parser(
        "status", help="the nodes of a cluster (or the one node), their agents and viewers")
    status.add_argument("--redis-url", dest="redis_url", help=HELP["redis_url"])
    status.add_argument("--redis-prefix", dest="redis_prefix", help=HELP["redis_prefix"])
    status.add_argument("--listen", dest="listen", help="a single node's HOST:PORT")
    _common(status)

    db = commands.add_parser("db", help="the catalogue's database")
    db_actions = db.add_subparsers(dest="action", required=True)
    db_copy = db_actions.add_parser(
        "copy", help="copy the whole catalogue (every row, ids and signing key) into an empty "
                     "database, e.g. PostgreSQL; stop the relay first")
    db_copy.add_argument("--to", required=True, metavar="URL",
                         help="SQLAlchemy URL of the target, e.g. "
                              "postgresql+asyncpg://user@host/dbname")
    _common(db_copy)

    user = commands.add_parser("user", help="manage accounts")
    actions = user.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create an account (password from a prompt or "
                                         "RELAY_PASSWORD)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may use the API")
    for action, text in (
        ("credential", "print the account's API credential (unionid)"),
        ("rotate", "issue a new API credential; tokens of the old one stop working"),
        ("password", "set a new password (prompt or RELAY_PASSWORD)"),
    ):
        actions.add_parser(action, help=text).add_argument("name")
    admin = actions.add_parser("admin", help="grant or withdraw administrator rights")
    admin.add_argument("name")
    admin.add_argument("state", choices=("on", "off"))
    actions.add_parser("list", help="list accounts")
    for sub in (add, admin, *(actions.choices[a] for a in ("credential", "rotate", "password",
                                                           "list"))):
        _common(sub)
    return parser


async def _agent_keys(args: argparse.Namespace, settings: Settings) -> None:
    catalogue = await _existing_catalogue(settings)
    keys = catalogue.agent_keys
    try:
        if args.action == "add":
            print(await keys.add(args.name, args.gatherers))
        elif args.action == "revoke":
            await keys.revoke(args.name)
            print(f"revoked agent key {args.name}", file=sys.stderr)
        elif args.action == "limit":
            await keys.set_limit(args.name, args.gatherers)
            print(f"agent key {args.name} may register {args.gatherers} gatherer(s)", file=sys.stderr)
        elif args.action == "rebind":
            await keys.rebind(args.name, args.gather_id)
            print(f"gatherer {args.gather_id} belongs to agent key {args.name}; its next hello with "
                  "that key takes it over, from this machine or a new one", file=sys.stderr)
        else:
            for key in await keys.list():
                owned = ",".join(map(str, key.gatherers)) or "-"
                print(f"{key.name}\t{'revoked' if key.revoked else 'active'}\t"
                      f"gatherers {len(key.gatherers)}/{key.max_gatherers}: {owned}")
    finally:
        await catalogue.close()


async def _db(args: argparse.Namespace, settings: Settings) -> None:
    from .catalogue.copy import copy_catalogue
    from .catalogue.database import Database

    source = (await _existing_catalogue(settings)).db
    try:
        target = await Database.open(args.to)
        try:
            copied = await copy_catalogue(source, target)
        finally:
            await target.close()
    finally:
        await source.close()
    print(f"copied the catalogue to {make_url(args.to).render_as_string(hide_password=True)}: "
          + ", ".join(f"{table} {count}" for table, count in copied.items()), file=sys.stderr)
    print("now run the relay with --database-url (or RELAY_DATABASE_URL) set to it",
          file=sys.stderr)


async def _existing_catalogue(settings: Settings) -> Catalogue:
    """The catalogue a management command works on; never a new, empty one made by mistake in
    the folder it was run from (``relay user list`` printing nothing)."""
    try:
        return await Catalogue.open(settings.db_url, create=False)
    except CatalogueUnavailable as exc:
        raise CommandError(f"{exc}; pass --data DIR (or RELAY_DATA) of a relay that has run, "
                           "or start one there with `relay serve --data DIR`") from exc


def _agent(args: argparse.Namespace) -> None:
    from .agent.main import run_agent

    key = args.key or os.environ.get("RELAY_AGENT_KEY", "")
    if not key:
        raise CommandError("no agent key: pass --key or set RELAY_AGENT_KEY")
    data = Path(args.data or os.environ.get("RELAY_DATA") or "agent-data")
    config = Path(args.config) if args.config else None
    demo_video = Path(args.demo_video) if args.demo_video else None
    _run(lambda: run_agent(args.server, key, data, config, demo_video))


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        field.name: getattr(args, field.name, None) for field in dataclasses.fields(Settings)
    }
    return load_settings(overrides, config_file=args.config)


def _new_password(name: str) -> str:
    password = os.environ.get("RELAY_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise CommandError("no password: set RELAY_PASSWORD or run in a terminal")
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    if len(password) < MIN_LENGTH:
        raise CommandError(f"the password needs at least {MIN_LENGTH} characters")
    return password


async def _user(args: argparse.Namespace, settings: Settings) -> None:
    catalogue = await _existing_catalogue(settings)
    accounts = catalogue.accounts
    try:
        if args.action == "add":
            account = await accounts.add(args.name, _new_password(args.name), args.admin)
            role = "administrator" if account.is_admin else "user"
            print(f"created {role} {account.name}", file=sys.stderr)
        elif args.action == "list":
            for account in await accounts.list():
                print(f"{account.name}\t{'admin' if account.is_admin else 'user'}")
        elif args.action == "credential":
            account = await accounts.by_name(args.name)
            if account is None:
                raise NotFound(f"no account named {args.name!r}")
            print(account.credential)
        elif args.action == "rotate":
            print(await accounts.rotate(args.name))
        elif args.action == "password":
            await accounts.set_password(args.name, _new_password(args.name))
        elif args.action == "admin":
            await accounts.set_admin(args.name, args.state == "on")
    finally:
        await catalogue.close()


def _run(work: Callable[[], Awaitable[Any]]) -> None:
    asyncio.run(work())  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "agent":
            setup_logging(args.log_level)
            _agent(args)
            return 0
        settings = _settings(args)
        setup_logging(settings.log_level if args.command in ("serve", "demo") else "warning")
        if args.command in ("serve", "demo"):
            from .server import serve

            serve(settings, demo=args.command == "demo")
        elif args.command == "user":
            _run(lambda: _user(args, settings))
        elif args.command == "agent-key":
            _run(lambda: _agent_keys(args, settings))
        elif args.command == "db":
            _run(lambda: _db(args, settings))
        elif args.command == "status":
            from .status import cluster_lines, single_node_lines

            lines = (asyncio.run(cluster_lines(settings)) if settings.redis_url
                     else single_node_lines(settings))
            print("\n".join(lines))
    except (ConfigError, CatalogueUnavailable, CommandError, NotFound, AlreadyExists,
            AgentConfigError, ValueError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
