#!/usr/bin/env bash
# The money store's figures on each engine, in one run (issue 22): riders
# signed up per second through the account API and charges dispatched per
# second from a backlog (scripts/charges-throughput.sh, on the embedded
# SQLite file, then on a throwaway PostgreSQL cluster with fsync on), and
# the pricer's taps per second (the criterion groups `pricing` and
# `pricing_postgres` of benches/stages.rs; that cluster runs fsync off).
# Both engines run on the same machine in the same run, so their ratio is
# the figure to quote.
#
#   scripts/money-store-figures.sh
#   RIDERS=5000 scripts/money-store-figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
MONEY_STORE=sqlite scripts/charges-throughput.sh
# On PostgreSQL with one connection each for the dispatcher and the
# account API (how they wrote before they had several), then the default.
for connections in 1 8; do
  MONEY_STORE=postgres STORE_CONNECTIONS=$connections scripts/charges-throughput.sh
done
# Ten samples a size: a 50 000-tap batch on PostgreSQL takes seconds.
cargo bench --bench stages -- pricing --sample-size 10 --warm-up-time 1 --measurement-time 10 2>&1 \
  | grep -E "^pricing|thrpt:"
