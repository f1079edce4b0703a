"""`radflow users add|passwd|roles|mfa|list|unlock|disable|enable`: user administration from the
shell, against the same store the API signs people in with (the messages database).

Passwords are read from stdin (`--password-stdin`, for scripts) or typed at a prompt; without
either, a random one-time password is printed, which the user must change at first sign-in.
Bad input exits 2 with the reason; nothing is half done.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from adapters.settings import Settings
from adapters.users import ROLES, UserError, Users, one_time_password


def _users(settings: Settings) -> Users:
    from api.auth import users_store

    return users_store(settings)


def _roles(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def _new_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, one_time): from stdin, a prompt (twice), or made up and shown once."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UserError("no password on stdin")
        return password, False
    if args.prompt:
        first = getpass.getpass("New password: ")
        if first != getpass.getpass("Again: "):
            raise UserError("the two passwords differ")
        return first, False
    return one_time_password(args.username), True


def _show(args: argparse.Namespace, answer: dict[str, Any], lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=2))
    else:
        print("\n".join(lines))


def _mfa_lines(users: Users, username: str, secret: str) -> list[str]:
    return [
        f"TOTP secret for {username}: {secret}",
        f"  add it to an authenticator app: {users.provisioning_uri(username, secret)}",
    ]


def _add(settings: Settings, args: argparse.Namespace) -> int:
    users = _users(settings)
    password, one_time = _new_password(args)
    user = users.add(args.username, password, _roles(args.roles), must_change_password=one_time)
    answer: dict[str, Any] = user.public()
    lines = [f"user {user.username} added with roles {', '.join(sorted(user.roles))}"]
    if one_time:
        answer["one_time_password"] = password
        lines.append(f"  one-time password (to be changed at first sign-in): {password}")
    if args.mfa:
        secret = users.enable_mfa(user.username)
        answer["totp_secret"] = secret
        answer["totp_uri"] = users.provisioning_uri(user.username, secret)
        lines += _mfa_lines(users, user.username, secret)
    _show(args, answer, lines)
    return 0


def _passwd(settings: Settings, args: argparse.Namespace) -> int:
    users = _users(settings)
    users.require(args.username)
    password, one_time = _new_password(args)
    users.set_password(args.username, password, must_change_password=one_time)
    users.revoke_all(args.username)  # sessions opened with the old password end
    users.unlock(args.username)
    lines = [f"password of {args.username} changed; their sessions ended"]
    if one_time:
        lines.append(f"  one-time password (to be changed at first sign-in): {password}")
    _show(args, {"username": args.username, "one_time_password": password if one_time else None}, lines)
    return 0


def _set_roles(settings: Settings, args: argparse.Namespace) -> int:
    users = _users(settings)
    current = set(users.require(args.username).roles)
    if args.set is not None:
        wanted = set(_roles(args.set))
    else:
        wanted = (current | set(_roles(args.add or ""))) - set(_roles(args.remove or ""))
    user = users.set_roles(args.username, wanted)
    print(f"{user.username}: {', '.join(sorted(user.roles))} (effective at their next sign-in or refresh)")
    return 0


def _mfa(settings: Settings, args: argparse.Namespace) -> int:
    users = _users(settings)
    users.require(args.username)
    if args.disable:
        users.disable_mfa(args.username)
        print(f"{args.username}: second factor removed")
        return 0
    secret = users.enable_mfa(args.username)
    _show(
        args,
        {
            "username": args.username,
            "totp_secret": secret,
            "totp_uri": users.provisioning_uri(args.username, secret),
        },
        _mfa_lines(users, args.username, secret),
    )
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    rows = [u.public() for u in _users(settings).all()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        flags = [
            flag
            for flag, on in (
                ("mfa", row["mfa"]),
                (f"locked until {row['locked_until']}", row["locked_until"]),
                ("must change password", row["must_change_password"]),
                ("disabled", row["disabled"]),
            )
            if on
        ]
        print(f"{row['username']:<24} {','.join(row['roles']):<40} {'; '.join(flags)}")
    return 0


def _unlock(settings: Settings, args: argparse.Namespace) -> int:
    users = _users(settings)
    users.unlock(args.username)
    print(f"{args.username}: unlocked")
    return 0


def _able(disabled: bool):  # type: ignore[no-untyped-def]
    def run(settings: Settings, args: argparse.Namespace) -> int:
        users = _users(settings)
        users.set_disabled(args.username, disabled)
        print(f"{args.username}: {'disabled; sessions ended' if disabled else 'enabled'}")
        return 0

    return run


def guarded(run):  # type: ignore[no-untyped-def]
    """Bad input (unknown user or role, weak password) exits 2 with the reason on stderr."""

    def wrapper(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return int(run(settings, args))
        except UserError as error:
            print(f"radflow users {args.action}: {error}", file=sys.stderr)
            return 2

    return wrapper


def add_users_commands(commands: Any) -> None:
    users = commands.add_parser("users", help="user administration: add, passwd, roles, mfa, list, unlock")
    sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")

    def password_source(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        group.add_argument("--prompt", action="store_true", help="type the password (asked twice)")

    add = sub.add_parser("add", help="add a user (without a password option: a one-time password)")
    add.add_argument("username")
    add.add_argument("--roles", required=True, help=f"comma-separated, of: {', '.join(ROLES)}")
    add.add_argument("--mfa", action="store_true", help="also enrol a TOTP second factor and show it")
    add.add_argument("--json", action="store_true")
    password_source(add)
    add.set_defaults(run=guarded(_add))

    passwd = sub.add_parser("passwd", help="set a password (without an option: a one-time password)")
    passwd.add_argument("username")
    passwd.add_argument("--json", action="store_true")
    password_source(passwd)
    passwd.set_defaults(run=guarded(_passwd))

    roles = sub.add_parser("roles", help="change a user's roles")
    roles.add_argument("username")
    change = roles.add_mutually_exclusive_group(required=True)
    change.add_argument("--set", help="the roles, comma-separated (replacing the current ones)")
    change.add_argument("--add", help="roles to add, comma-separated")
    change.add_argument("--remove", help="roles to remove, comma-separated")
    roles.set_defaults(run=guarded(_set_roles))

    mfa = sub.add_parser(
        "mfa", help="enrol (or replace) a user's TOTP secret and show it; --disable removes it"
    )
    mfa.add_argument("username")
    mfa.add_argument("--disable", action="store_true")
    mfa.add_argument("--json", action="store_true")
    mfa.set_defaults(run=guarded(_mfa))

    listing = sub.add_parser("list", help="the users, their roles and state")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=guarded(_list))

    unlock = sub.add_parser("unlock", help="clear a lock-out after failed sign-ins")
    unlock.add_argument("username")
    unlock.set_defaults(run=guarded(_unlock))

    for name, disabled in (("disable", True), ("enable", False)):
        able = sub.add_parser(name, help=f"{name} a user's sign-in")
        able.add_argument("username")
        able.set_defaults(run=guarded(_able(disabled)))
