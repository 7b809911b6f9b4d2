#!/usr/bin/env bash
# Start each local service the integration tests need if it is installed but not answering.
# The start commands are the machine's own (see the README's "Tests" section).
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {  # port name
  for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done
  echo "services: $2 did not come up on 127.0.0.1:$1" >&2; return 1
}
start() {  # port name command...
  local port=$1 name=$2; shift 2
  if up "$port"; then return 0; fi
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "services: $name is not installed (no $1); its integration tests will fail" >&2
    return 0
  fi
  echo "services: starting $name" >&2
  "$@" >/dev/null 2>&1 || true
  wait_for "$port" "$name"
}
start 5432 PostgreSQL pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -1)" main start
start 3306 MariaDB start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
start 6379 Redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
start 5672 RabbitMQ rabbitmq-server -detached
# RabbitMQ's management API on 15672 (--rabbitmq-api; tests/integration/test_broker_api.py): enable the
# installed plugin on the running node. --online starts it in place (no broker restart, open connections
# stay); it is idempotent and persists in enabled_plugins.
if up 5672 && ! up 15672 && rabbitmq-plugins list -m rabbitmq_management 2>/dev/null | grep -qx rabbitmq_management; then
  echo "services: enabling rabbitmq_management" >&2
  rabbitmq-plugins --quiet enable --online rabbitmq_management >/dev/null 2>&1 || true
  wait_for 15672 "RabbitMQ management API"
fi
exit 0
