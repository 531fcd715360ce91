#!/usr/bin/env bash
# Ensure a throwaway PostgreSQL server runs on loopback for Deputy's tests and print
# its URL on stdout (the only stdout output, so URL=$(scripts/postgres.sh) works;
# progress goes to stderr). `--stop` stops it. Env: DEPUTY_TEST_POSTGRES (used as-is
# if reachable), DEPUTY_PG_DIR (default /tmp/deputy-postgres), DEPUTY_PG_PORT (54329).
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
PORT="${DEPUTY_PG_PORT:-54329}"
# Absolute path: we cd / below, and the path is written into the server config.
DIR="$(realpath -m "${DEPUTY_PG_DIR:-/tmp/deputy-postgres}")"
URL="postgres://deputy@127.0.0.1:${PORT}/deputy"
IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1
cd /  # the server user may not be able to read the caller's cwd

# An externally provided server wins if it answers.
if [ "${1:-}" != "--stop" ] && [ -n "${DEPUTY_TEST_POSTGRES:-}" ]; then
  if command -v psql >/dev/null && PGCONNECT_TIMEOUT=5 psql "$DEPUTY_TEST_POSTGRES" -Atqc 'select 1' >/dev/null 2>&1; then
    echo "$DEPUTY_TEST_POSTGRES"; exit 0
  fi
  log "DEPUTY_TEST_POSTGRES is set but not reachable; using a local cluster instead"
fi

# Prefer the newest Debian-layout install; fall back to whatever pg_ctl is on PATH
# (e.g. /usr/local/bin symlinks), resolved so initdb/postgres come from the same dir.
find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) \
           "$(dirname "$(readlink -f "$(command -v pg_ctl || echo /nonexistent)")")"; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then BIN="$d"; return 0; fi
  done
  return 1
}
# PostgreSQL refuses to run as root, so as root everything runs as `postgres`.
# runuser -u execs the command directly (no login shell), so any shell works.
as_pg() { if [ "$IS_ROOT" -eq 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ "${1:-}" = "--stop" ]; then
  if find_bin && [ -f "$DIR/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
    as_pg "$BIN/pg_ctl" -D "$DIR" -m fast -w stop >&2
  else
    log "no server running in $DIR"
  fi
  exit 0
fi

if ! find_bin; then
  log "PostgreSQL server binaries not found; installing Debian's postgresql package"
  SUDO=""; [ "$IS_ROOT" -eq 1 ] || SUDO="sudo"
  # env(1) so DEBIAN_FRONTEND survives sudo's environment reset; output to stderr.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  find_bin || die "postgresql installed but initdb/pg_ctl/postgres still not found"
fi
log "using $BIN"

if [ "$IS_ROOT" -eq 1 ] && ! id -u postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# Fresh cluster: the package's own cluster (port 5432, systemd/init scripts,
# /var/run/postgresql) is deliberately ignored.
if [ ! -f "$DIR/PG_VERSION" ]; then
  [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && die "$DIR exists, is not empty and is not a cluster"
  mkdir -p "$DIR"; chmod 700 "$DIR"
  [ "$IS_ROOT" -eq 1 ] && chown postgres: "$DIR"
  as_pg test -w "$DIR" || die "server user cannot write $DIR (check parent directory permissions)"
  log "initialising cluster in $DIR" # --no-sync: durability is irrelevant here
  as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >&2
  # Throwaway test server: trust on the socket and on 127.0.0.1 only.
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | as_pg tee "$DIR/pg_hba.conf" >/dev/null
  echo "include_if_exists = 'deputy.conf'" | as_pg tee -a "$DIR/postgresql.conf" >/dev/null
fi

# Rewritten on every start so DEPUTY_PG_PORT changes take effect on a reused dir.
# Socket lives in the data dir because /var/run/postgresql may not exist.
# Durability is irrelevant for tests, so trade it for speed.
as_pg tee "$DIR/deputy.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

running_port=""
if as_pg "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  running_port="$(sed -n 4p "$DIR/postmaster.pid" 2>/dev/null || true)"
fi
if [ -n "$running_port" ] && [ "$running_port" != "$PORT" ]; then
  log "server in $DIR is on port $running_port, restarting on $PORT"
  as_pg "$BIN/pg_ctl" -D "$DIR" -m fast -w stop >&2
  running_port=""
fi
started=1
if [ -n "$running_port" ]; then
  log "reusing running server in $DIR on port $PORT"
else
  log "starting server in $DIR on port $PORT"
  as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 30 start >&2 || started=0
fi

# Deadline-based (each probe can itself block up to -t seconds); a failed start
# gives up at once. Either way show the server log, which says why.
deadline=$((SECONDS + 30))
until [ "$started" -eq 1 ] && "$BIN/pg_isready" -q -t 2 -h 127.0.0.1 -p "$PORT"; do
  if [ "$started" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ]; then
    log "server not ready on 127.0.0.1:$PORT; tail of $DIR/server.log:"
    tail -n 30 "$DIR/server.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done

# Idempotent role/database creation (\gexec runs the CREATE only when missing).
# The suite creates a database per test, so the role must be able to CREATEDB.
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 >&2 <<'SQL'
SELECT 'CREATE ROLE deputy SUPERUSER CREATEDB LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'deputy')\gexec
SELECT 'CREATE DATABASE deputy OWNER deputy' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'deputy')\gexec
SQL

echo "$URL"
