# Sourced by .ci/run: start_postgres creates a throwaway PostgreSQL cluster (Debian's postgresql) in a
# temporary directory, listening only on a Unix socket there, creates the database fastif_test, exports
# FASTIF_TEST_PG_URL for the tests and stops the server (and removes the cluster) when the shell exits.
# PostgreSQL refuses to run as root: as root the server runs as the postgres user.

pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

start_postgres() {
  PG_BIN=$(compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -1)
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fastif-pg.XXXXXX")
  trap stop_postgres EXIT
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U fastif --auth=trust -E UTF8 >"$PG_DIR/initdb.log" ||
    { cat "$PG_DIR/initdb.log"; return 1; }
  # no TCP listener at all (listen_addresses=''), so no port can clash; fsync off: a throwaway cluster
  pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses='' -k $PG_DIR -c fsync=off -c max_connections=200" start >/dev/null ||
    { cat "$PG_DIR/server.log"; return 1; }
  pg_as_owner "$PG_BIN/createdb" -h "$PG_DIR" -U fastif fastif_test
  export FASTIF_TEST_PG_URL="postgresql+psycopg://fastif@/fastif_test?host=$PG_DIR"
  echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on $PG_DIR (FASTIF_TEST_PG_URL=$FASTIF_TEST_PG_URL)"
}
