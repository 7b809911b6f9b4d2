"""Find the Celery workers running on this host and read what their command lines say.

A worker is a process started as ``celery ... worker`` (the console script, ``python -m celery``,
or the title Celery sets with setproctitle: ``[celeryd: node@host:MainProcess] -active- (args)``).
Prefork children are forked without exec, so they carry the parent's command line (or the title
``[celeryd: node@host:ForkPoolWorker-1]``): a worker is the topmost such process, its pool processes
are its descendants. Options are read the way click reads them (Celery's CLI): the last of a
repeated option wins, ``-c4``/``-c 4``/``--concurrency=4`` are one option, and ``-P prefork`` (the
default) yields to the app's ``worker_pool`` setting (``celery/bin/worker.py`` ``WorkersPool``).

A worker belongs to the target when it holds a TCP connection to the target's broker or result
backend (host and port), or when its ``-A`` names the target's ``--app``. Reading another user's
connections needs their rights: such a worker is listed as not inspectable, never guessed.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from celerydiag.target import Target

# Options of the `celery` group that take a value (so their value is not taken for the subcommand).
_GLOBAL_VALUE_OPTIONS = frozenset({"-A", "--app", "-b", "--broker", "--result-backend", "--loader",
                                   "--config", "--workdir"})
# The options we read, by every spelling Celery 5 accepts; value -> field of WorkerCommand.
_OPTIONS = {"-A": "app", "--app": "app", "-b": "broker", "--broker": "broker", "-P": "pool",
            "--pool": "pool", "-c": "concurrency", "--concurrency": "concurrency",
            "--autoscale": "autoscale", "-n": "nodename", "--hostname": "nodename", "-Q": "queues",
            "--queues": "queues", "-O": "optimization", "--optimization": "optimization"}
_SHORT_GLUED = ("-A", "-b", "-P", "-c", "-n", "-Q", "-O")  # click accepts -c4, -Pthreads
_INTERPRETER = re.compile(r"^(python|pypy)[0-9.]*(\.exe)?$")
_INTERPRETER_VALUE_FLAGS = frozenset({"-X", "-W", "-Q"})
_TITLE = re.compile(r"^\[celeryd: (?P<node>.*):(?P<process>[A-Za-z][\w-]*)\](?P<rest>.*)$")
POOL_ALIASES = {"processes": "prefork"}  # celery.concurrency.ALIASES' compat alias
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433,
                 "oracle": 1521, "redis": 6379, "rediss": 6379}


@dataclass(frozen=True)
class WorkerCommand:
    """What a ``celery worker`` command line says; None where it says nothing (Celery's default or
    the app's setting then applies: see :func:`resolve_pool` and :func:`resolve_concurrency`)."""

    app: str | None = None
    broker: str | None = None
    pool: str | None = None
    concurrency: int | str | None = None  # an int, "auto", or None
    autoscale: tuple[int, int] | None = None  # (max, min), as Celery's Autoscale type returns it
    nodename: str | None = None
    queues: tuple[str, ...] = ()
    optimization: str | None = None


def parse_command(argv: Sequence[str]) -> WorkerCommand | None:
    """The worker command in a process's argv, or None when the process is no ``celery worker``
    main process (another program, another celery subcommand, a titled pool child)."""
    args = celery_args(argv)
    if args is None or _subcommand(args) != "worker":
        return None
    values = _option_values(args)
    concurrency: int | str | None = None
    if "concurrency" in values:
        text = values["concurrency"].strip().lower()
        concurrency = "auto" if text == "auto" else (int(text) if text.isdigit() and int(text) > 0 else None)
    return WorkerCommand(
        app=values.get("app"), broker=values.get("broker"),
        pool=POOL_ALIASES.get(values.get("pool", ""), values.get("pool")),
        concurrency=concurrency, autoscale=_autoscale(values.get("autoscale")),
        nodename=values.get("nodename"),
        queues=tuple(q for q in values.get("queues", "").split(",") if q),
        optimization=values.get("optimization"))


def celery_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after the ``celery`` program (``sys.argv[1:]`` of the worker), or None."""
    argv = [str(a) for a in argv]
    if not argv:
        return None
    title = _TITLE.match(" ".join(argv))
    if title:  # setproctitle: Celery puts strargv(sys.argv) = sys.argv[1:] in the last parentheses
        if title["process"] != "MainProcess":
            return None
        inner = re.search(r"\((.*)\)\s*$", title["rest"])
        try:
            return shlex.split(inner[1]) if inner else None
        except ValueError:
            return inner[1].split() if inner else None
    for i, token in enumerate(argv):
        name = re.split(r"[\\/]", token)[-1]
        if name in ("celery", "celery.exe") or token.endswith(("celery/__main__.py", "celery\\__main__.py")):
            return argv[i + 1:] if _is_interpreter(argv[:i]) else None
    return None


def _is_interpreter(prefix: Sequence[str]) -> bool:
    """Nothing, or a Python interpreter and its own flags (``python -u -m``)."""
    if not prefix:
        return True
    if not _INTERPRETER.match(re.split(r"[\\/]", prefix[0])[-1]):
        return False
    rest = list(prefix[1:])
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("-"):
            return False
        if flag in _INTERPRETER_VALUE_FLAGS and rest:
            rest.pop(0)
    return True


def _subcommand(args: Sequence[str]) -> str | None:
    skip = False
    for token in args:
        if skip:
            skip = False
            continue
        if token.startswith("-"):
            skip = token in _GLOBAL_VALUE_OPTIONS  # "--app=x" and "-Ax" carry their value
            continue
        return token
    return None


def _option_values(args: Sequence[str]) -> dict[str, str]:
    """The last value of each option we read, from any of its spellings (click: last one wins)."""
    values: dict[str, str] = {}
    tokens = list(args)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            break
        name, sep, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in _OPTIONS:
            if not sep:
                if i >= len(tokens):
                    break
                value = tokens[i]
                i += 1
            values[_OPTIONS[name]] = value
        elif token[:2] in _SHORT_GLUED and len(token) > 2 and not token.startswith("--"):
            values[_OPTIONS[token[:2]]] = token[2:]
    return values


def _autoscale(text: str | None) -> tuple[int, int] | None:
    """``--autoscale=10,3`` or ``3,10`` → (10, 3); ``--autoscale=10`` → (10, 0) (Celery's Autoscale)."""
    if not text:
        return None
    try:
        numbers = sorted((int(p) for p in text.split(",")), reverse=True)
    except ValueError:
        return None
    if len(numbers) == 1:
        return numbers[0], 0
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


def resolve_pool(command: WorkerCommand, conf_pool: str | None = None) -> str:
    """The pool the worker runs: ``-P``, except that prefork (given or the default) yields to the
    app's ``worker_pool`` when we know the app's settings (Celery's WorkersPool.convert)."""
    if command.pool in (None, "prefork") and conf_pool:
        return POOL_ALIASES.get(str(conf_pool), str(conf_pool))
    return command.pool or "prefork"


def resolve_concurrency(command: WorkerCommand, pool: str, cpus: int,
                        conf_concurrency: int | str | None = None) -> tuple[int, str]:
    """Pool size and where it came from: solo is 1 whatever ``-c`` says; ``--autoscale`` grows to
    its maximum; ``-c`` (``auto`` ~ the CPUs); the app's ``worker_concurrency``; else
    billiard.cpu_count(), the CPUs of the host (celery/worker/worker.py ``setup_defaults``)."""
    if pool == "solo":
        return 1, "the solo pool runs one task at a time"
    if command.autoscale:
        return command.autoscale[0], f"--autoscale={command.autoscale[0]},{command.autoscale[1]} (its maximum)"
    if isinstance(command.concurrency, int):
        return command.concurrency, "-c on the command line"
    if command.concurrency == "auto":
        return cpus, "-c auto (the CPUs available; a cgroup quota may lower it for prefork)"
    if isinstance(conf_concurrency, int) and conf_concurrency > 0:
        return conf_concurrency, "worker_concurrency in the app's settings"
    return cpus, "no -c: Celery's default, the host's CPU count"


# ---- processes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A TCP service of the target (the broker, the result backend) as IPs and one port."""

    role: str  # "broker" or "backend"
    host: str
    port: int
    ips: frozenset[str]

    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def matches(self, ip: str, port: int) -> bool:
        return port == self.port and _plain_ip(ip) in self.ips


@dataclass(frozen=True)
class Connection:
    pid: int
    local: str
    remote: str
    status: str
    roles: tuple[str, ...]  # which target endpoints it reaches ("broker", "backend")


@dataclass(frozen=True)
class Worker:
    """One worker main process with its pool processes, and what ties it to the target."""

    pid: int
    command: WorkerCommand
    children: tuple[int, ...]
    username: str | None
    connections: tuple[Connection, ...] | None  # None: not ours to read (another user's process)
    matched_by: tuple[str, ...] = ()

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.pid, *self.children)

    def connection_count(self, role: str) -> int:
        return sum(1 for c in self.connections or () if role in c.roles)


@dataclass(frozen=True)
class Census:
    """What one scan of the process table found: the target's workers, the others, and the
    workers whose connections we may not read (so a skip can say why)."""

    matched: tuple[Worker, ...] = ()
    unmatched: tuple[Worker, ...] = ()
    uninspectable: tuple[Worker, ...] = ()
    endpoints: tuple[Endpoint, ...] = field(default=())


def endpoints(target: Target) -> tuple[Endpoint, ...]:
    """The target's broker and result backend as host:port with resolved IPs (failover URLs give
    several). In-memory, SQLite, file and disabled backends have none."""
    found: list[Endpoint] = []
    for part in (target.broker_url or "").split(";"):
        host_port = _broker_host_port(part.strip())
        if host_port:
            found.append(_endpoint("broker", *host_port))
    backend = target.backend_url or ""
    if target.backend_scheme == "rpc":  # states travel as messages through the broker
        found += [Endpoint("backend", e.host, e.port, e.ips) for e in found if e.role == "broker"]
    else:
        host_port = _backend_host_port(backend)
        if host_port:
            found.append(_endpoint("backend", *host_port))
    return tuple(found)


def _broker_host_port(url: str) -> tuple[str, int] | None:
    if not url or url.startswith(("memory:", "filesystem:", "sqla+", "sqlalchemy+")):
        return None
    from kombu import Connection as KombuConnection

    try:
        conn = KombuConnection(url)
        host, port = conn.hostname, conn.port or conn.transport.default_port
    except Exception:  # an unknown transport: the target module already reports it
        return None
    return (str(host), int(port)) if host and port else None


def _backend_host_port(url: str) -> tuple[str, int] | None:
    from urllib.parse import urlsplit

    if url.startswith("db+"):
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url[3:])
        except Exception:
            return None
        port = parsed.port or DEFAULT_PORTS.get(parsed.get_backend_name())
        return (str(parsed.host), int(port)) if parsed.host and port else None
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return (parts.hostname, int(port)) if parts.hostname and port else None


def _endpoint(role: str, host: str, port: int) -> Endpoint:
    """Resolved once per run; a name that does not resolve matches nothing (never every address)."""
    try:
        ips = {_plain_ip(str(info[4][0])) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        ips = set()
    return Endpoint(role, host, port, frozenset(ips))


def _plain_ip(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") else ip


def census(target: Target, exclude: Iterable[int] = ()) -> Census:
    """One pass over the process table (command lines only), then the connections of the worker
    processes: cheap enough for ``applies``. ``exclude``: our own process tree."""
    skip = set(exclude)
    commands: dict[int, WorkerCommand] = {}
    parents: dict[int, int] = {}
    users: dict[int, str | None] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "username"]):
        info = proc.info
        pid = int(info["pid"])
        parents[pid] = int(info.get("ppid") or 0)
        if pid in skip:
            continue
        command = parse_command(info.get("cmdline") or ())
        if command is not None:
            commands[pid] = command
            users[pid] = info.get("username")
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    ends = endpoints(target)
    matched: list[Worker] = []
    unmatched: list[Worker] = []
    hidden: list[Worker] = []
    for pid, command in sorted(commands.items()):
        if parents.get(pid) in commands:  # a forked pool child with its parent's command line
            continue
        kids = tuple(sorted(_descendants(pid, children)))
        conns = _connections((pid, *kids), ends)
        why = _why_matched(command, conns, ends, target)
        worker = Worker(pid, command, kids, users.get(pid), conns, why)
        if why:
            matched.append(worker)
        elif conns is None:
            hidden.append(worker)
        else:
            unmatched.append(worker)
    return Census(tuple(matched), tuple(unmatched), tuple(hidden), ends)


def _descendants(pid: int, children: Mapping[int, list[int]]) -> list[int]:
    found: list[int] = []
    todo = list(children.get(pid, ()))
    while todo and len(found) < 10_000:  # a bound, should the table be cyclic mid-update
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def _connections(pids: Sequence[int], ends: Sequence[Endpoint]) -> tuple[Connection, ...] | None:
    """TCP connections of these processes; None when the main one's are not ours to read."""
    found: list[Connection] = []
    for i, pid in enumerate(pids):
        try:
            proc = psutil.Process(pid)
            read = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
            conns: list[Any] = list(read(kind="tcp"))
        except psutil.AccessDenied:
            if i == 0:
                return None
            continue
        except psutil.NoSuchProcess:
            continue
        for c in conns:
            if not c.raddr:
                continue
            roles = tuple(e.role for e in ends if e.matches(c.raddr.ip, c.raddr.port))
            found.append(Connection(pid, f"{c.laddr.ip}:{c.laddr.port}", f"{c.raddr.ip}:{c.raddr.port}",
                                    str(c.status), tuple(dict.fromkeys(roles))))
    return tuple(found)


def _why_matched(command: WorkerCommand, conns: tuple[Connection, ...] | None,
                 ends: Sequence[Endpoint], target: Target) -> tuple[str, ...]:
    why: list[str] = []
    roles = {r for c in conns or () for r in c.roles}
    why += [f"a connection to the target's {role}" for role in ("broker", "backend") if role in roles]
    named = _broker_host_port(command.broker) if command.broker else None
    if named and any(e.role == "broker" and (e.host, e.port) == named for e in ends):
        why.append("-b naming the target's broker")  # never the URL itself: it may hold a password
    if command.app and target.app_name and same_app(command.app, target.app_name):
        why.append(f"-A {command.app}")
    return tuple(why)


def same_app(a: str, b: str) -> bool:
    """``proj``, ``proj.celery``, ``proj.celery:app`` and ``proj.celery.app`` name one app when
    one is the other with the attribute (or the ``.celery`` submodule Celery looks for) left out."""
    def forms(spec: str) -> set[str]:
        module, _, attr = spec.strip().partition(":")
        out = {module, f"{module}.{attr}" if attr else module}
        if module.endswith(".celery"):
            out.add(module[: -len(".celery")])
        return {o for o in out if o}

    return bool(forms(a) & forms(b))


def own_pids() -> set[int]:
    """This process: its command line is never ``celery worker``, and e2e's worker is a thread of
    it, but a ``celery worker`` we exec'd into would be. Child processes are not excluded: a user
    (or a test) may well run doctor from the process that started the workers."""
    return {os.getpid()}
