#!/bin/sh
# Recommended by cargo xtask perf-sweep on vm (2 cores), 2026-11-26T04:53:57Z.
exec caiman pipeline "$@" --params "$(dirname "$0")/recommended_params.json" --backend threads:2
