#!/bin/sh
# check.sh fails when kernels/kernels_amd64.s or kernels/stubs_amd64.go differ from what the
# generator in this folder makes (someone edited them, or changed gen.go without regenerating).
# It needs only Go and the module cache (or the Go module proxy) for avo.
set -eu
cd "$(dirname "$0")"
exec go test -count=1 -run '^TestGeneratedUpToDate$' .
