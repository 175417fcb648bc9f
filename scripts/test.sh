#!/usr/bin/env bash
# Runs baton's whole test suite (unit, integration, doc tests) on SQLite and PostgreSQL.
#
# PostgreSQL: uses BATON_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres); when
# nothing answers there and a local Debian cluster exists, starts it. Tests create and drop their
# own databases. If PostgreSQL cannot be reached, the run fails: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

export BATON_TEST_PG_URL="${BATON_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_ready() { pg_isready -q -d "$BATON_TEST_PG_URL" 2>/dev/null; }

if ! pg_ready; then
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header | while read -r ver cluster _; do
      echo "starting PostgreSQL cluster $ver/$cluster" >&2
      pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" start || true
    done
  fi
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
if ! pg_ready; then
  echo "error: PostgreSQL is not reachable at ${BATON_TEST_PG_URL%%@*}@…: the Postgres half of the suite cannot run" >&2
  exit 1
fi

cargo test --all-targets "$@"
cargo test --doc "$@"
