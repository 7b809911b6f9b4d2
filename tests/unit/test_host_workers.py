"""The host probe reads a worker's pool and concurrency from its command line the way Celery 5's
click CLI does (celery/bin/worker.py): every spelling of an option, the last one wins, solo is one
process, --autoscale grows to its maximum, prefork yields to the app's worker_pool, and no -c
means the host's CPU count."""

from __future__ import annotations

import pytest

from celerydiag.host.workers import (
    WorkerCommand,
    parse_command,
    resolve_concurrency,
    resolve_pool,
    same_app,
)

CPUS = 8


def resolved(argv: str, conf_pool: str | None = None, conf_concurrency: int | None = None) -> tuple[str, int]:
    command = parse_command(argv.split())
    assert command is not None, argv
    pool = resolve_pool(command, conf_pool)
    return pool, resolve_concurrency(command, pool, CPUS, conf_concurrency)[0]


@pytest.mark.parametrize(("argv", "pool", "concurrency"), [
    ("celery -A proj worker -P solo", "solo", 1),
    ("celery -A proj worker -P solo -c 4", "solo", 1),  # solo runs one task whatever -c says
    ("celery -A proj worker --pool=threads", "threads", CPUS),
    ("celery -A proj worker --pool threads --concurrency 4", "threads", 4),
    ("celery -A proj worker -c4", "prefork", 4),
    ("celery -A proj worker --concurrency 4", "prefork", 4),
    ("celery -A proj worker --concurrency=4", "prefork", 4),
    ("celery -A proj worker --autoscale=10,3", "prefork", 10),
    ("celery -A proj worker --autoscale=3,10", "prefork", 10),  # Celery sorts: (max, min)
    ("celery -A proj worker --autoscale=6", "prefork", 6),
    ("celery -A proj worker", "prefork", CPUS),  # no -c: billiard.cpu_count()
    ("celery -A proj worker -c 0", "prefork", CPUS),  # 0 falls through to the default
    ("celery -A proj worker -c auto", "prefork", CPUS),
    ("celery -A proj worker -P processes -c 3", "prefork", 3),  # the compat alias
    ("celery -A proj worker -Pgevent -c 100", "gevent", 100),
    ("celery -A proj worker -P solo -c 1 -P prefork -c 2", "prefork", 2),  # click: the last one wins
    ("/venv/bin/python3.11 -u -m celery --app=proj.celery:app worker -l INFO -P eventlet -c 50", "eventlet", 50),
    ("/venv/bin/python /venv/bin/celery -A proj worker -c 2", "prefork", 2),
    ("/usr/local/bin/celery --broker redis://h:6379/0 -A proj worker -n w1@%h -Q a,b -O fair", "prefork", CPUS),
])
def test_pool_and_concurrency_from_the_command_line(argv: str, pool: str, concurrency: int) -> None:
    assert resolved(argv) == (pool, concurrency)


def test_the_other_fields_are_read_too() -> None:
    command = parse_command("/usr/local/bin/celery --broker=redis://h:6379/0 -A proj worker -n w1@%h "
                            "-Q a,b -O fair".split())
    assert command == WorkerCommand(app="proj", broker="redis://h:6379/0", nodename="w1@%h",
                                    queues=("a", "b"), optimization="fair")


def test_the_apps_settings_apply_where_the_command_line_says_nothing() -> None:
    assert resolved("celery -A proj worker", conf_concurrency=3) == ("prefork", 3)
    assert resolved("celery -A proj worker -c 5", conf_concurrency=3) == ("prefork", 5)
    # WorkersPool.convert: prefork, given or the default, yields to worker_pool; other pools do not.
    assert resolved("celery -A proj worker -P prefork", conf_pool="threads") == ("threads", CPUS)
    assert resolved("celery -A proj worker", conf_pool="solo") == ("solo", 1)
    assert resolved("celery -A proj worker -P gevent -c 9", conf_pool="threads") == ("gevent", 9)


def test_the_process_title_celery_sets_with_setproctitle() -> None:
    main = "[celeryd: w1@box:MainProcess] -active- (-A proj worker -P prefork -c 2 -Q q1)"
    assert resolved(main) == ("prefork", 2)
    # psutil splits a title without NULs on spaces; a pool child's title carries no arguments.
    assert parse_command(main.split(" ")) == parse_command([main])
    assert parse_command(["[celeryd: w1@box:ForkPoolWorker-1]"]) is None


@pytest.mark.parametrize("argv", [
    "celery -A proj beat",
    "celery -A worker beat",  # -A's value is not the subcommand
    "celery -A proj inspect ping",
    "celery multi start w1 -A proj",
    "watchmedo auto_restart -- celery -A proj worker",
    "timeout 60 celery -A proj worker",
    "grep celery worker",
    "vim celery.py worker",
    "/usr/bin/python3 manage.py runserver",
    "",
])
def test_what_is_not_a_worker_main_process(argv: str) -> None:
    assert parse_command(argv.split()) is None


@pytest.mark.parametrize(("a", "b", "same"), [
    ("proj", "proj", True),
    ("proj", "proj.celery:app", True),
    ("proj.celery", "proj.celery:app", True),
    ("proj.celery.app", "proj.celery:app", True),
    ("tests.scenarios.apps.scenario_app:app", "tests.scenarios.apps.scenario_app:app", True),
    ("proj", "other", False),
    ("proj", "proj.other:app", False),
])
def test_one_app_by_its_spellings(a: str, b: str, same: bool) -> None:
    assert same_app(a, b) is same
    assert same_app(b, a) is same


@pytest.mark.parametrize(("broker", "backend", "expected"), [
    ("amqp://guest:pw@127.0.0.1//", "redis://127.0.0.1/0", {("broker", 5672), ("backend", 6379)}),
    ("redis://127.0.0.1:7000/1", "db+postgresql+psycopg://u:pw@127.0.0.1/db", {("broker", 7000), ("backend", 5432)}),
    ("amqp://127.0.0.1:5673//;amqp://127.0.0.1:5674//", "db+mysql+pymysql://root@127.0.0.1/test",
     {("broker", 5673), ("broker", 5674), ("backend", 3306)}),
    ("amqp://127.0.0.1//", "rpc://", {("broker", 5672), ("backend", 5672)}),  # states go through the broker
    ("memory://", "db+sqlite:///tmp/x.sqlite", set()),  # the embedded default: nothing on the network
])
def test_the_targets_endpoints_with_each_services_default_port(broker: str, backend: str,
                                                               expected: set[tuple[str, int]]) -> None:
    from celerydiag.host.workers import endpoints
    from celerydiag.target import resolve_target

    found = endpoints(resolve_target(broker=broker, backend=backend))
    assert {(e.role, e.port) for e in found} == expected
    assert all("127.0.0.1" in e.ips and e.matches("::ffff:127.0.0.1", e.port) for e in found)
