#!/usr/bin/env bash
# The suite again, on PostgreSQL, when a server is given: DEPUTY_TEST_POSTGRES, a URL such as
# `bash scripts/postgres.sh` prints. Without one it is skipped, so that `npm test` passes on a
# machine without PostgreSQL; CI sets DEPUTY_REQUIRE_POSTGRES=1 so that it cannot be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DEPUTY_TEST_POSTGRES:-}" ]; then
  if [ "${DEPUTY_REQUIRE_POSTGRES:-}" = "1" ]; then
    echo "DEPUTY_REQUIRE_POSTGRES=1 but DEPUTY_TEST_POSTGRES is not set" >&2
    exit 1
  fi
  echo "PostgreSQL run skipped: DEPUTY_TEST_POSTGRES=\$(bash scripts/postgres.sh) npm test runs it too." >&2
  exit 0
fi

echo "Running the suite on PostgreSQL (${DEPUTY_TEST_POSTGRES})" >&2
exec node --import tsx --test --test-concurrency=1 test/*.test.ts
