"""Mosquitto security configuration: accounts, the ACL, the password file and the TLS listener.

One MQTT account per hub and per service. A hub's username is its registry id, and the ACL
lets it write under `osteotel/v1/{hub}/#` and read nothing; services get the rights their
flows need (docs/security.md has the table). The ACL names every user explicitly, generated
from the registry, rather than a `%u` pattern: an account that is in the password file but
not in the registry then has no rights at all, and the file reads as a plain audit list.

Secrets are `SecretStr` here, as in `osteotel.settings`, and reach `mosquitto_passwd` only on
its stdin: never in argv (visible to every local user in /proc), never in a plaintext file.

Run `python -m apps.brokerconf --help` to provision a broker from a registry file.
"""

import argparse
import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from devices.registry import Registry
from osteotel.errors import ConfigError, MissingBinaryError

__all__ = [
    "ALERTS_USER",
    "EMULATOR_USER",
    "INGEST_USER",
    "RESERVED_HUB_IDS",
    "Account",
    "AclRule",
    "broker_accounts",
    "generate_password",
    "main",
    "production_config",
    "read_secret_file",
    "render_acl",
    "security_config",
    "tls_listener_config",
    "write_acl_file",
    "write_password_file",
    "write_secret_file",
]

_PREFIX = "osteotel/v1"

INGEST_USER = "osteotel-ingest"
"""The ingest service: reads every v1 topic, writes derived results."""

ALERTS_USER = "osteotel-alerts"
"""The alerts service: reads derived results, hub status, device events and telemetry."""

EMULATOR_USER = "osteotel-emulator"
"""The emulator and replay tool: writes as any registered hub. Test setups only."""

RESERVED_HUB_IDS = frozenset({"derived", "alerts"})
"""Second-level names the services publish under; a hub so named would write into them."""

_SERVICE_USERS = frozenset({INGEST_USER, ALERTS_USER, EMULATOR_USER})
_MIN_PASSWORD_CHARS = 16
# mosquitto_passwd reads a line into a fixed buffer; stay far below it.
_MAX_PASSWORD_CHARS = 256
_PASSWD_TIMEOUT_S = 30.0
_SYSTEM_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")


@dataclass(frozen=True)
class AclRule:
    """One `topic` line of a mosquitto ACL: an access right on a topic filter."""

    access: Literal["read", "write", "readwrite"]
    topic: str


@dataclass(frozen=True)
class Account:
    """An MQTT username and the ACL rules it is granted; nothing else is allowed."""

    username: str
    rules: tuple[AclRule, ...]
    comment: str = ""


def _hub_account(hub_id: str) -> Account:
    return Account(
        hub_id,
        (AclRule("write", f"{_PREFIX}/{hub_id}/#"),),
        "hub: its own subtree, write only",
    )


def broker_accounts(registry: Registry, *, include_emulator: bool = False) -> tuple[Account, ...]:
    """List the accounts a broker serving `registry` needs, hubs first, in id order.

    Args:
        registry: the device registry; each hub becomes an account named by its id.
        include_emulator: add `osteotel-emulator`, which may write as every registered hub.
            Only for test and demo brokers: in production it would undo the per-hub ACL.

    Returns:
        The accounts with their ACL rules.

    Raises:
        ConfigError: a hub id is reserved (`derived`, `alerts`) or equals a service username.
    """
    hub_ids = sorted(registry.hubs)
    for hub_id in hub_ids:
        if hub_id in RESERVED_HUB_IDS:
            raise ConfigError(
                f"hub id {hub_id!r} is reserved: services publish under {_PREFIX}/{hub_id}/"
            )
        if hub_id in _SERVICE_USERS:
            raise ConfigError(f"hub id {hub_id!r} is the username of an osteotel service")
    accounts = [_hub_account(hub_id) for hub_id in hub_ids]
    accounts.append(
        Account(
            INGEST_USER,
            (AclRule("read", f"{_PREFIX}/#"), AclRule("write", f"{_PREFIX}/derived/#")),
            "service: reads every v1 topic, writes derived results",
        )
    )
    accounts.append(
        Account(
            ALERTS_USER,
            (
                AclRule("read", f"{_PREFIX}/derived/#"),
                AclRule("read", f"{_PREFIX}/+/status"),
                # Its fault, battery and step rules read the events; overload, data gaps and
                # silence the telemetry (`watch_telemetry`). Without these the broker accepts
                # the subscriptions and delivers nothing: those alerts would never fire.
                AclRule("read", f"{_PREFIX}/+/+/events"),
                AclRule("read", f"{_PREFIX}/+/+/telemetry"),
                # readwrite: the MQTT notifier's session reads back what it published
                # (alerts.notify.MqttNotifier: exactly once across a crash).
                AclRule("readwrite", f"{_PREFIX}/alerts/#"),
            ),
            "service: reads derived results, hub status, device events and telemetry; "
            "writes alerts and reads them back",
        )
    )
    if include_emulator:
        accounts.append(
            Account(
                EMULATOR_USER,
                tuple(AclRule("write", f"{_PREFIX}/{hub_id}/#") for hub_id in hub_ids),
                "TEST ONLY: the emulator writes as every registered hub",
            )
        )
    return tuple(accounts)


def render_acl(accounts: Iterable[Account], *, source: str = "") -> str:
    """Render a mosquitto ACL file that grants each account exactly its rules.

    No rule precedes the first `user` line, so anonymous clients (refused anyway) and any
    username without a block are granted nothing.

    Args:
        accounts: the accounts, e.g. from `broker_accounts`.
        source: where the accounts came from (a registry path), for the header comment.

    Returns:
        The file's text.
    """
    origin = f" from {source}" if source else ""
    lines = [
        f"# Generated by apps.brokerconf{origin}; regenerate rather than edit.",
        "# Only the rights listed under a user are granted; everything else is denied.",
    ]
    for account in accounts:
        lines.append("")
        if account.comment:
            lines.append(f"# {account.comment}")
        lines.append(f"user {account.username}")
        lines.extend(f"topic {rule.access} {rule.topic}" for rule in account.rules)
    return "\n".join(lines) + "\n"


def _private_temp(path: Path) -> Path:
    """Create an empty file next to `path`, mode 0600 whatever the umask, and return it."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    # O_EXCL with mode 0600: the file never exists with wider permissions.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return temp


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only.

    The new file is written beside it and renamed over it, so a broker reloading on SIGHUP
    reads either the old file or the new one, never half of one.
    """
    temp = _private_temp(path)
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def write_acl_file(path: Path, accounts: Iterable[Account], *, source: str = "") -> Path:
    """Write the ACL for `accounts` to `path` with mode 0600.

    Returns:
        `path`.
    """
    _write_private(path, render_acl(accounts, source=source))
    return path


def generate_password() -> SecretStr:
    """Return a new random password: 32 bytes from the OS generator, URL-safe, 43 characters."""
    return SecretStr(secrets.token_urlsafe(32))


def _check_credential(username: str, password: str) -> None:
    # Usernames here are hub ids or service names; ':' would split the passwd line.
    if not username or any(c.isspace() or c == ":" for c in username):
        raise ConfigError(f"MQTT username {username!r} is empty or contains ':' or whitespace")
    if not _MIN_PASSWORD_CHARS <= len(password) <= _MAX_PASSWORD_CHARS:
        raise ConfigError(
            f"the password for {username!r} must have {_MIN_PASSWORD_CHARS} to "
            f"{_MAX_PASSWORD_CHARS} characters, it has {len(password)}"
        )
    if any(c in "\r\n\0" for c in password):
        raise ConfigError(f"the password for {username!r} contains a line break or NUL")


def _mosquitto_passwd(binary: str | Path | None) -> str:
    wanted = str(binary) if binary is not None else "mosquitto_passwd"
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *_SYSTEM_DIRS])
    found = shutil.which(wanted, path=search_path)
    if found is None:
        raise MissingBinaryError(f"{wanted} not found: install it with `apt-get install mosquitto`")
    return found


def _add_user(executable: str, path: Path, username: str, password: SecretStr) -> None:
    secret = password.get_secret_value()
    # It asks twice ("Password:", "Reenter password:") and reads each answer from stdin.
    result = subprocess.run(
        [executable, str(path), username],
        input=f"{secret}\n{secret}\n".encode(),
        capture_output=True,
        timeout=_PASSWD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        # Its stderr holds prompts and the error, never the password itself.
        error = result.stderr.decode(errors="replace").strip()
        raise ConfigError(
            f"mosquitto_passwd failed for {username!r} (exit {result.returncode}): {error}"
        )


def write_password_file(
    path: Path,
    credentials: Mapping[str, SecretStr],
    *,
    binary: str | Path | None = None,
) -> Path:
    """Write a mosquitto password file (salted PBKDF2-SHA512 hashes) with mode 0600.

    Each password goes to `mosquitto_passwd` on its stdin, never on its command line. The file
    is built beside `path` and renamed over it, so a failure leaves the old file in place. The
    broker must run as the file's owner to read it: the `Mosquitto` launcher does; in
    production chown it to the `mosquitto` user (docs/security.md).

    Args:
        path: the password file; replaced if it exists.
        credentials: username to password, 16 to 256 characters each.
        binary: the mosquitto_passwd executable; found on PATH or in /usr/bin when None.

    Returns:
        `path`.

    Raises:
        ConfigError: a username or password breaks a rule, or mosquitto_passwd failed.
        MissingBinaryError: mosquitto_passwd is not installed.
    """
    for username, password in credentials.items():
        _check_credential(username, password.get_secret_value())
    executable = _mosquitto_passwd(binary)
    temp = _private_temp(path)
    try:
        for username, password in credentials.items():
            _add_user(executable, temp, username, password)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # mosquitto_passwd rewrites the file; make sure it is still private.
    temp.chmod(0o600)
    os.replace(temp, path)
    return path


def write_secret_file(path: Path, password: SecretStr) -> Path:
    """Store one plaintext password for the client that uses it, mode 0600, no newline.

    Returns:
        `path`.
    """
    _write_private(path, password.get_secret_value())
    return path


def read_secret_file(path: Path) -> SecretStr:
    """Read a password stored by `write_secret_file`, refusing a file others can read.

    Args:
        path: the secret file; one line, trailing whitespace ignored.

    Returns:
        The password.

    Raises:
        ConfigError: the file is missing, readable or writable by group or others, or empty.
    """
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: mode {stat.filemode(mode)} lets others read it; use 0600")
        text = path.read_text(encoding="utf-8").rstrip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read secret: {exc}") from exc
    if not text:
        raise ConfigError(f"{path}: the secret file is empty")
    return SecretStr(text)


def _config_path(path: Path) -> str:
    text = str(path)
    if any(c.isspace() for c in text):
        raise ConfigError(f"mosquitto config paths cannot contain whitespace: {text}")
    return text


def security_config(*, password_file: Path, acl_file: Path) -> str:
    """Return the config lines that turn on passwords and the ACL for every listener.

    Pair them with `allow_anonymous false`, which the `Mosquitto` launcher writes itself when
    given `allow_anonymous=False`.

    Raises:
        ConfigError: a path contains whitespace.
    """
    return f"password_file {_config_path(password_file)}\nacl_file {_config_path(acl_file)}\n"


def tls_listener_config(
    *,
    port: int,
    certfile: Path,
    keyfile: Path,
    host: str | None = None,
    cafile: Path | None = None,
) -> str:
    """Return the config lines of a TLS listener (TLS 1.2 at least, no client certificates).

    Args:
        port: the TCP port, 8883 by convention.
        certfile: the server certificate (PEM), chain included if intermediate CAs sign it.
        keyfile: its private key (PEM), readable by the broker's user only.
        host: the address to bind; every interface when None.
        cafile: CA certificates (PEM) for client certificates, if any are ever presented.

    Raises:
        ConfigError: a path contains whitespace.
    """
    lines = [f"listener {port}" + (f" {host}" if host else "")]
    if cafile is not None:
        lines.append(f"cafile {_config_path(cafile)}")
    lines += [
        f"certfile {_config_path(certfile)}",
        f"keyfile {_config_path(keyfile)}",
        # Since mosquitto 2.0 this is the minimum version accepted, so TLS 1.3 still works.
        "tls_version tlsv1.2",
        "require_certificate false",
    ]
    return "\n".join(lines) + "\n"


def production_config(
    *,
    config_dir: Path = Path("/etc/mosquitto/osteotel"),
    tls_port: int = 8883,
    local_port: int = 1883,
) -> str:
    """Return a complete mosquitto.conf for a production broker.

    Hubs connect to the TLS listener on every interface; the services on the same host use a
    plain listener bound to loopback. Both require a password and apply the ACL.

    Args:
        config_dir: where `passwd`, `acl` and `certs/` (server.crt, server.key) live.
        tls_port: the TLS listener's port.
        local_port: the loopback listener's port.

    Returns:
        The file's text; deploy/mosquitto/mosquitto.conf is this with the defaults.
    """
    certs = config_dir / "certs"
    return "\n".join(
        [
            "# osteotel production broker. Generated by `apps.brokerconf.production_config`;",
            "# docs/security.md explains every line. Secrets live beside it, never in git.",
            "",
            "# One set of security settings for every listener.",
            "per_listener_settings false",
            "allow_anonymous false",
            security_config(password_file=config_dir / "passwd", acl_file=config_dir / "acl"),
            "persistence true",
            "persistence_location /var/lib/mosquitto/",
            "log_dest syslog",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # Logs the username and address of each connection, never a password.
            "connection_messages true",
            "max_queued_messages 100000",
            # Ingest acknowledges a message only once it is stored, in batches: the window of
            # unacknowledged messages per client must hold a few batches (docs/ingest.md).
            "max_inflight_messages 1000",
            "",
            "# Services on this host (ingest, alerts): loopback only, still password and ACL.",
            f"listener {local_port} 127.0.0.1",
            "",
            "# Hubs: TLS on every interface.",
            tls_listener_config(
                port=tls_port,
                certfile=certs / "server.crt",
                keyfile=certs / "server.key",
            ),
        ]
    )


def _load_or_create_secret(path: Path) -> SecretStr:
    if path.exists():
        return read_secret_file(path)
    password = generate_password()
    write_secret_file(path, password)
    return password


def main(argv: Sequence[str] | None = None) -> int:
    """Provision a broker: secrets per account, the password file and the ACL.

    Existing secret files are kept, so running it again after a registry change only adds the
    new hubs' secrets. Prints the files written, never a secret.

    Returns:
        The process exit code: 0 on success, 2 on a configuration error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m apps.brokerconf",
        description="Write mosquitto passwd and acl files for the hubs of a device registry.",
    )
    parser.add_argument("--registry", type=Path, required=True, help="the registry TOML")
    parser.add_argument("--out-dir", type=Path, required=True, help="where passwd and acl go")
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        required=True,
        help="one 0600 file per account, named by its username; created when missing",
    )
    parser.add_argument(
        "--include-emulator",
        action="store_true",
        help="add the test-only emulator account that writes as every hub",
    )
    args = parser.parse_args(argv)
    try:
        registry = Registry.load(args.registry)
        accounts = broker_accounts(registry, include_emulator=args.include_emulator)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        args.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        credentials = {
            account.username: _load_or_create_secret(args.secrets_dir / account.username)
            for account in accounts
        }
        passwd = write_password_file(args.out_dir / "passwd", credentials)
        acl = write_acl_file(args.out_dir / "acl", accounts, source=str(args.registry))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {passwd} and {acl} for {len(accounts)} accounts")
    print(f"secrets in {args.secrets_dir}: {', '.join(credentials)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
