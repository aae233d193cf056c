#!/usr/bin/env bash
# Runs the demo: 3 throwaway redis-server processes and 3 usersvc replicas on free
# loopback ports, over a table of its own in the local PostgreSQL, driven by the load
# generator for 20 s with one Redis node killed for 4 s midway. Flags are passed on:
#   ./run.sh -duration 60s -outage 0
# USERSVC_DSN=postgres://user@host:5432/db points it at another PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")"
exec go run ./cmd/demo "$@"
