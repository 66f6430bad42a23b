#!/usr/bin/env bash
# The pytest worker count for scripts/test.sh and .ci/run: one per core, at most 4.
workers=$(nproc)
[ "$workers" -gt 4 ] && workers=4
echo "$workers"
