"""``gridwatch console``: serve the console, manage its users and API tokens.

    gridwatch console -c FILE                          serve (config's [console] bind and port)
    gridwatch console -c FILE users add NAME --role operator --scope 'City/County'
    gridwatch console -c FILE users list | users remove NAME
    gridwatch console -c FILE tokens add NAME [--label TEXT]
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from gridwatch.config import ConfigError, GridwatchConfig, load
from gridwatch.streams.cases import ROLES, CaseError, CaseStore


def add_parser(sub) -> None:
    c = sub.add_parser("console", help="the operator console (web pages, JSON API, live updates); users and tokens")
    _store_args(c, argparse.SUPPRESS)
    c.add_argument("--bind", help="override console.bind")
    c.add_argument("--port", type=int, help="override console.port")
    c.set_defaults(fn=cmd_console, config=None, db=None, what=None)
    csub = c.add_subparsers(dest="what")
    u = csub.add_parser("users", help="add, list or remove console users")
    usub = u.add_subparsers(dest="users_cmd", required=True)
    ua = usub.add_parser("add", help="add a user (or change an existing one's password, role and scope)")
    ua.add_argument("name")
    ua.add_argument("--role", choices=ROLES, required=True)
    ua.add_argument("--scope", default="", help="region path prefix the user sees and acts on, e.g. 'Jiangcheng/Riverside District' ('' = all)")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from standard input (else $GRIDWATCH_PASSWORD, else a prompt)")
    _store_args(ua, argparse.SUPPRESS)
    ul = usub.add_parser("list", help="list users")
    _store_args(ul, argparse.SUPPRESS)
    ur = usub.add_parser("remove", help="remove a user, their sessions and tokens")
    ur.add_argument("name")
    _store_args(ur, argparse.SUPPRESS)
    t = csub.add_parser("tokens", help="API tokens for integrations")
    tsub = t.add_subparsers(dest="tokens_cmd", required=True)
    ta = tsub.add_parser("add", help="make an API token for a user (printed once; send it as 'Authorization: Bearer TOKEN')")
    ta.add_argument("name")
    ta.add_argument("--label", default="")
    _store_args(ta, argparse.SUPPRESS)


def _store_args(p, default) -> None:
    p.add_argument("-c", "--config", default=default, help="config file (its store and [console] section)")
    p.add_argument("--db", default=default, help="store file, when there is no config file (default var/gridwatch.db)")


def _config(a) -> tuple[GridwatchConfig, Path]:
    cfg = load(a.config) if a.config else GridwatchConfig()
    path = Path(a.db) if a.db else (cfg.data_dir / cfg.store.path if a.config else Path("var") / "gridwatch.db")
    return cfg, path


def cmd_console(a) -> int:
    try:
        cfg, path = _config(a)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if a.what == "users":
            return _users(a, cfg, path)
        if a.what == "tokens":
            st = CaseStore(path, cfg.console.deadlines_h)
            print(st.add_token(a.name, a.label))
            return 0
        from gridwatch.console.server import Console
        from gridwatch.observability import setup_logging

        setup_logging(cfg.log.level, cfg.log.format, tuple(s for s in ((cfg.mqtt.password if cfg.mqtt else None),) if s))
        con = Console(cfg, store_path=path)
        sock_host, sock_port = a.bind or cfg.console.bind, cfg.console.port if a.port is None else a.port
        sock = con.bind_socket(sock_host, sock_port)  # fails early, with one line, on a taken port
        print(f"gridwatch console on http://{sock_host}:{con.port}/ (store {path}); Ctrl-C stops it", flush=True)
        con.serve_forever(sock)
        return 0
    except CaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"console: cannot listen: {e}", file=sys.stderr)
        return 2


def _users(a, cfg, path: Path) -> int:
    st = CaseStore(path, cfg.console.deadlines_h)
    if a.users_cmd == "add":
        if a.password_stdin:
            pw = sys.stdin.readline().rstrip("\n")
        else:
            pw = os.environ.get("GRIDWATCH_PASSWORD") or getpass.getpass(f"password for {a.name}: ")
        st.add_user(a.name, pw, a.role, a.scope)
        print(f"user {a.name}: role {a.role}, scope {a.scope or '(all regions)'}")
    elif a.users_cmd == "list":
        for u in st.users():
            print(f"{u.name:20} {u.role:11} {u.scope or '(all regions)'}")
    elif a.users_cmd == "remove":
        if not st.remove_user(a.name):
            print(f"error: no user {a.name!r}", file=sys.stderr)
            return 1
        print(f"user {a.name} removed")
    return 0
