#!/usr/bin/env bash
# The GPU half of `make gpu-check`. The Makefile builds the cgo test binary of cgo/cuda here (Go
# and cgo, no GPU needed) into .gpu/ and copies this script to .gpu/run.sh; a machine with an
# NVIDIA GPU and driver (and compute-sanitizer, for the memcheck pass) but no Go then runs
#
#	bash .gpu/run.sh
#
# in the repository root, in well under 10 minutes: every GPU test on the real driver, a
# compute-sanitizer memcheck pass over the tests (small sizes), and the issue's targets measured
# beside the floors measured in the same run. Full logs go to $OUT (or .gpu/out); the console
# gets the summaries. The exit status is non-zero when any step failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
bin=$here/cuda.test
status=0
step() { printf '\n== %s\n' "$*"; }
# summary prints what a test log says: failures in full, the rest counted.
summary() {
	grep -E '^\s*--- FAIL|^panic|^FAIL|^ok|SIGSEGV|========= (ERROR|Invalid|Program hit)' "$1" | head -60
	printf 'passed %d, failed %d, skipped %d (full log: %s)\n' \
		"$(grep -cE '^\s*--- PASS' "$1")" "$(grep -cE '^\s*--- FAIL' "$1")" "$(grep -cE '^\s*--- SKIP' "$1")" "$1"
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,clocks.max.sm --format=csv 2>&1 | head -5
uname -r
nproc

# The tests run on the real driver only: the fake GPUs (which need the sources and g++) are
# exercised where the binary is built.
export WATTAGG_TEST_FAKECUDA=0
cd "$here"

step "GPU tests"
if ! timeout 240 "$bin" -test.count=1 -test.v -test.timeout 230s >"$out/tests.log" 2>&1; then
	status=1
fi
summary "$out/tests.log"
grep -E 'no real GPU|no GPU' "$out/tests.log" | head -3

step "targets (issue 4), measured beside their floors"
if ! WATTAGG_GPU_BENCH=1 timeout 240 "$bin" -test.count=1 -test.v -test.run '^TestGPUBenchTable$' -test.timeout 230s >"$out/bench.log" 2>&1; then
	status=1
fi
grep -vE '^(=== RUN|--- PASS|PASS$)' "$out/bench.log" | tail -30

step "compute-sanitizer memcheck (tests at -short sizes)"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -z "$sanitizer" ]; then
	echo "compute-sanitizer not found: skipped"
	status=1
else
	if ! GODEBUG=asyncpreemptoff=1 timeout 300 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 3 \
		"$bin" -test.count=1 -test.v -test.short -test.timeout 290s \
		-test.run 'TestConformance|TestResidentRoundTrip|TestPinnedInputs|TestWeightedSumResident|TestGramResident|TestSumSquares|TestSelectResident|TestSelectGlobalColumns|TestModSum|TestOptimizerStep|TestOptimizeFromOutputCallback|TestOptimizePinned|TestScale|TestAddNoise|OnGPU' \
		>"$out/memcheck.log" 2>&1; then
		status=1
	fi
	summary "$out/memcheck.log"
	grep -E '^========= ERROR SUMMARY' "$out/memcheck.log" | tail -1
fi

step "Go benchmarks"
if ! timeout 120 "$bin" -test.run '^$' -test.bench . -test.benchtime 5x -test.timeout 110s >"$out/gobench.log" 2>&1; then
	status=1
fi
grep -E '^Benchmark|^ok|FAIL' "$out/gobench.log" | head -20

step "GPU CHECK: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
