#!/usr/bin/env bash
# The GPU half of `make gpu-check`. The Makefile builds, here (Go and cgo, no GPU needed), the
# cgo test binary of cgo/cuda and the wattagg CLI into .gpu/ and copies this script to
# .gpu/run.sh; a machine with an NVIDIA GPU and driver (compute-sanitizer optional) but no Go
# then runs, in the repository root,
#
#	bash .gpu/run.sh
#
# within GPU_CHECK_BUDGET seconds (default 470; every step's time limit is cut to what is left):
#
#  1. smoke    TestSmoke: open the GPU, print it, one small weighted sum against the CPU's bits.
#              If it fails, the check stops there.
#  2. tests    every other test, each top-level test in its own process (a sticky CUDA error
#              loses that process's context only), with WATTAGG_REQUIRE_GPU=1: a test that would
#              skip for want of a GPU fails. Fake-GPU tests skip (WATTAGG_TEST_FAKECUDA=0).
#  3. targets  TestGPUBenchTable: the targets beside the floors measured in the same run (copy
#              bandwidths, the CPU device's Gram and Select), each with its verdict, for 64
#              clients × 16M f32 and for 128 × 8M.
#  4. energy   the wattagg CLI: devices, calibrate --quick, bench energy (always-CPU, always-GPU,
#              the planner), so that NVML's energy counter (and RAPL, if readable) are read for
#              real: predicted and measured joules of each policy with their provenance.
#  5. cli      the wattagg CLI end to end on files: `demo` writes a federation (16 clients × 25M
#              parameters, 4 of them bf16), then `aggregate --device cuda:0` and `--device cpu`
#              with fedavg, median, trimmed-mean, krum and fedadam: each pair of outputs must be
#              byte-identical (krum's distances add their terms in another order on the GPU, but
#              it outputs the client it selects, and no two clients here are near a tie), with
#              each run's wall time. GPU_CHECK_CLI_PARAMS changes the model size.
#  6. memcheck compute-sanitizer memcheck over a set of tests at -short sizes; a host without
#              compute-sanitizer (a driver-only install) reports it skipped, not failed.
#  7. gobench  the Go benchmarks, if time is left.
#
# Logs go to $OUT (or .gpu/out), at most 8 files; the console gets each step's essentials and a
# one-screen summary at the end. Exit status: 0 PASS, 1 FAIL, 2 INCOMPLETE (nothing failed, but a
# step ran out of time).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
bin=$here/cuda.test
cli=$here/wattagg
budget=${GPU_CHECK_BUDGET:-470}
t0=$SECONDS
failed=0
incomplete=0
summary=()

elapsed() { echo $((SECONDS - t0)); }
# limit N: a step's time limit, N seconds or what is left of the budget (5 s kept for the summary).
limit() {
	local left=$((budget - $(elapsed) - 5))
	if ((left < $1)); then echo $((left > 0 ? left : 0)); else echo "$1"; fi
}
row() { summary+=("$(printf '%-9s %-11s %s' "$1" "$2" "$3")"); }
step() { printf '\n== %s (%ds elapsed)\n' "$*" "$(elapsed)"; }
# run LIMIT CMD...: CMD under a time limit; its status, 124 when it ran out of time.
run() {
	local l=$1
	shift
	if ((l < 1)); then return 124; fi
	timeout --kill-after=5 "$l" "$@"
}

print_summary() {
	local verdict=PASS code=0
	if ((failed)); then
		verdict=FAIL code=1
	elif ((incomplete)); then
		verdict=INCOMPLETE code=2
	fi
	{
		printf '\n== summary (%ds of a %ds budget)\n' "$(elapsed)" "$budget"
		printf '%s\n' "$gpu"
		printf '%s\n' "${summary[@]}"
		printf 'GPU CHECK: %s (logs in %s)\n' "$verdict" "$out"
	} | tee "$out/summary.txt"
	exit $code
}

export WATTAGG_TEST_FAKECUDA=0 WATTAGG_REQUIRE_GPU=1
# Every test is a process that loads the kernels: let the driver cache their JIT-compiled code.
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-1073741824}
cd "$here"

step "machine"
gpu=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,clocks.max.sm \
	--format=csv,noheader 2>&1 | head -2 | tr '\n' ' ')
gpu="GPU: ${gpu:-nvidia-smi gave nothing}; host: $(uname -r), $(nproc) CPUs"
echo "$gpu"
for f in "$bin" "$cli"; do
	[ -x "$f" ] || { echo "missing $f: run make gpu-check where Go is"; row setup FAIL "missing $f"; failed=1; print_summary; }
done

step "1. smoke test"
run "$(limit 60)" "$bin" -test.run '^TestSmoke$' -test.count=1 -test.v -test.timeout 55s >"$out/smoke.log" 2>&1
rc=$?
grep -E '^\s+\S+_test\.go:[0-9]+:' "$out/smoke.log" | sed -E 's/^\s+\S+_test\.go:[0-9]+: //' | head -8
if ((rc != 0)) || ! grep -q '^--- PASS: TestSmoke' "$out/smoke.log"; then
	[ $rc = 124 ] && why="timed out" || why="failed (exit $rc)"
	row smoke FAIL "$why: nothing else is run; see smoke.log"
	failed=1
	print_summary
fi
row smoke ok "$(grep -m1 -o 'smoke: weighted.*' "$out/smoke.log" | cut -c8-)"

step "2. tests, one process each"
tests_end=$((t0 + ${GPU_CHECK_TESTS_UNTIL:-240}))
: >"$out/tests.log"
pass=0 fail=0 skip=0 notrun=0
failures=() notrun_names=()
declare -A skip_reasons=()
for name in $("$bin" -test.list '^Test' 2>/dev/null | grep -vE '^(TestSmoke|TestGPUBenchTable)$'); do
	l=$((tests_end - SECONDS))
	l=$((l < 60 ? l : 60))
	l=$(limit "$l")
	if ((l < 5)); then
		notrun=$((notrun + 1))
		notrun_names+=("$name")
		continue
	fi
	printf '\n##### %s\n' "$name" >>"$out/tests.log"
	run "$l" "$bin" -test.run "^${name}\$" -test.count=1 -test.v -test.timeout "$((l > 6 ? l - 3 : l))s" >"$out/one.log" 2>&1
	rc=$?
	cat "$out/one.log" >>"$out/tests.log"
	if ((rc == 124)); then
		fail=$((fail + 1))
		failures+=("$name (timed out after ${l}s)")
	elif ((rc != 0)) || grep -qE '^--- FAIL' "$out/one.log"; then
		fail=$((fail + 1))
		failures+=("$name: $(grep -m1 -E '^\s+\S+_test\.go:[0-9]+:|^panic:' "$out/one.log" | sed 's/^\s*//' | cut -c1-110)")
	elif grep -qE "^--- SKIP: ${name} " "$out/one.log"; then
		skip=$((skip + 1))
		# go test -v prints a test's log lines (the reason) before its --- SKIP line.
		reason=$(grep -B1 -E "^--- SKIP: ${name} " "$out/one.log" | head -1 | sed -E 's/^\s*\S+_test\.go:[0-9]+: //' | cut -c1-70)
		skip_reasons["$reason"]=$((${skip_reasons["$reason"]:-0} + 1))
	else
		pass=$((pass + 1))
	fi
done
rm -f "$out/one.log"
echo "passed $pass, failed $fail, skipped $skip, not run (time) $notrun"
for f in "${failures[@]:0:12}"; do echo "  FAIL $f"; done
if ((fail)); then failed=1; fi
if ((notrun)); then incomplete=1; fi
res=ok
((notrun)) && res=INCOMPLETE
((fail)) && res=FAIL
row tests "$res" "passed $pass, failed $fail, skipped $skip, not run $notrun (tests.log)"
for f in "${failures[@]:0:8}"; do row "" "" "FAIL $f"; done
((notrun)) && row "" "" "not run: ${notrun_names[*]:0:6}..."
for r in "${!skip_reasons[@]}"; do row "" "" "skipped ${skip_reasons[$r]}: $r"; done

step "3. targets beside their floors"
: >"$out/bench.log"
# targets LABEL CLIENTS PARAMS: TestGPUBenchTable on a federation of CLIENTS × PARAMS f32 (both
# 4 GiB: 64 clients go through the kernels of one 64-wide tile, 128 through the pairs of tiles).
targets() {
	local label=$1 log
	log=$(mktemp)
	run "$(limit 100)" env WATTAGG_GPU_BENCH=1 WATTAGG_GPU_BENCH_CLIENTS="$2" WATTAGG_GPU_BENCH_PARAMS="$3" \
		"$bin" -test.run '^TestGPUBenchTable$' -test.count=1 -test.v -test.timeout 95s >"$log" 2>&1
	local rc=$?
	{ printf '\n##### %s\n' "$label"; cat "$log"; } >>"$out/bench.log"
	echo "$label:"
	grep -vE '^(=== RUN|--- PASS|PASS$|ok )' "$log" | tail -20
	local met
	met=$(grep -m1 '^targets met:' "$log" | cut -d: -f2-)
	if ((rc == 124)); then
		row targets INCOMPLETE "$label: timed out (bench.log)"
		incomplete=1
	elif ((rc != 0)) || [ -z "$met" ]; then
		row targets FAIL "$label: the measurement failed (bench.log)"
		failed=1
	else
		row targets ok "$label: met$met (a missed target is reported, not failed)"
		while read -r line; do row "" "" "$line"; done < <(grep -E ' (met|MISSED)$' "$log" | sed -E 's/ {2,}/ /g' | cut -c1-110)
	fi
	rm -f "$log"
}
targets "64 clients × 16M" 64 16777216
targets "128 clients × 8M" 128 8388608

step "4. energy: devices, calibrate --quick, bench energy"
# The calibration profile stays beside the binaries (the device tool brings back at most 8 files
# from $OUT); energy.log ends with a copy of it.
export WATTAGG_PROFILE="$here/profile.json"
: >"$out/energy.log"
energy_ok=1
# bench energy: 100 rounds per policy, so that a round of a few milliseconds spans enough
# updates of NVML's counter (the table flags windows shorter than 10 updates).
for args in "devices" "calibrate --quick --progress never" "bench energy --progress never --runs 100"; do
	case $args in devices) cap=20 ;; calibrate*) cap=45 ;; *) cap=90 ;; esac
	printf '\n$ wattagg %s\n' "$args" | tee -a "$out/energy.log"
	# shellcheck disable=SC2086 # args are words
	run "$(limit $cap)" "$cli" $args >>"$out/energy.log" 2>&1
	rc=$?
	if ((rc != 0)); then
		energy_ok=0
		echo "exit $rc" | tee -a "$out/energy.log"
		((rc == 124)) && incomplete=1 || failed=1
	fi
done
if [ -f "$WATTAGG_PROFILE" ]; then
	printf '\n$ cat %s\n' "$WATTAGG_PROFILE" >>"$out/energy.log"
	cat "$WATTAGG_PROFILE" >>"$out/energy.log"
fi
# The essentials: the meters and their provenance, each policy's predicted and measured joules.
meters=$(grep -E '^\s+((rapl|nvml):|meter )' "$out/energy.log" | sed -E 's/^\s+//' | sort -u | cut -c1-110)
policies=$(sed -n '/^\$ wattagg bench energy/,$p' "$out/energy.log" | grep -E '^\s*(policy|always-|planner )' | cut -c1-140)
printf '%s\n%s\n' "$meters" "$policies"
row energy "$([ $energy_ok = 1 ] && echo ok || echo FAIL)" "$(sed -n '/^\$ wattagg bench energy/,$p' "$out/energy.log" | grep -m1 -E '^(fedavg of|wattagg:)' | cut -c1-100) (energy.log)"
while read -r line; do [ -n "$line" ] && row "" "" "$line"; done <<<"$meters"
while read -r line; do [ -n "$line" ] && row "" "" "$(sed -E 's/ {2,}/ /g; s/^ //' <<<"$line" | cut -c1-110)"; done <<<"$policies"

step "5. cli: aggregate --device cuda:0 against --device cpu on demo files"
cli_dir=$(mktemp -d)
: >"$out/cli.log"
cli_ok=1 cli_rows=()
if ! run "$(limit 60)" "$cli" demo --dir "$cli_dir/fed" --keep --clients 16 --params "${GPU_CHECK_CLI_PARAMS:-25000000}" --progress never >>"$out/cli.log" 2>&1; then
	cli_ok=0
	cli_rows+=("demo failed (cli.log)")
else
	fed=$cli_dir/fed
	for rule in fedavg median trimmed-mean krum fedadam; do
		extra=()
		[ "$rule" = fedadam ] && extra=(--global "$fed/global.safetensors")
		times=""
		for dev in cpu cuda:0; do
			o="$cli_dir/${rule}-${dev%%:*}.safetensors"
			printf '\n$ wattagg aggregate --device %s --rule %s\n' "$dev" "$rule" >>"$out/cli.log"
			s0=$(date +%s.%N)
			run "$(limit 40)" "$cli" aggregate --device "$dev" --rule "$rule" --mixed-dtypes "${extra[@]}" --json -o "$o" "$fed/clients" >"$cli_dir/rep.json" 2>>"$out/cli.log"
			rc=$?
			s1=$(date +%s.%N)
			head -c 2000 "$cli_dir/rep.json" >>"$out/cli.log"
			if ((rc != 0)); then
				cli_ok=0
				times+=" $dev exit $rc"
				continue
			fi
			times+=" $dev $(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.2fs", b-a}')"
			[ "$dev" = cuda:0 ] && ! grep -q '"cuda:0' "$cli_dir/rep.json" && { cli_ok=0; times+=" (report names no cuda:0 device)"; }
		done
		if [ -f "$cli_dir/${rule}-cpu.safetensors" ] && [ -f "$cli_dir/${rule}-cuda.safetensors" ]; then
			if cmp -s "$cli_dir/${rule}-cpu.safetensors" "$cli_dir/${rule}-cuda.safetensors"; then
				same="same bytes"
			else
				same="BYTES DIFFER"
				cli_ok=0
			fi
		else
			same="no output"
			cli_ok=0
		fi
		cli_rows+=("$rule:$times; $same")
	done
fi
rm -rf "$cli_dir"
printf '%s\n' "${cli_rows[@]}"
row cli "$([ $cli_ok = 1 ] && echo ok || echo FAIL)" "16 clients × ${GPU_CHECK_CLI_PARAMS:-25000000} params (4 bf16), cuda:0 against cpu (cli.log)"
for r in "${cli_rows[@]}"; do row "" "" "$r"; done
((cli_ok)) || failed=1

step "6. compute-sanitizer memcheck (tests at -short sizes)"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$sanitizer" ]; then
	echo "compute-sanitizer not found (a driver-only host): skipped"
	row memcheck skipped "compute-sanitizer not found"
else
	l=$(limit 90)
	GODEBUG=asyncpreemptoff=1 run "$l" "$sanitizer" --tool memcheck --leak-check full --error-exitcode 3 \
		"$bin" -test.count=1 -test.v -test.short -test.timeout "$((l > 10 ? l - 5 : l))s" \
		-test.run '^(TestSmoke|TestOddLayoutsAligned|TestResidentRoundTrip|TestPinnedInputs|TestWeightedSumResident|TestGramResident|TestSelectResident|TestModSum|TestOptimizerStep|TestOptimizePinned|TestScale|TestAddNoise|TestCancelWithinOneSlab)$' \
		>"$out/memcheck.log" 2>&1
	rc=$?
	errs=$(grep -m1 -E '^========= ERROR SUMMARY' "$out/memcheck.log")
	echo "${errs:-no error summary}; $(grep -cE '^--- PASS' "$out/memcheck.log") passed, $(grep -cE '^--- FAIL' "$out/memcheck.log") failed"
	if ((rc == 124)); then
		row memcheck INCOMPLETE "ran out of its ${l}s (memcheck.log)"
		incomplete=1
	elif ((rc != 0)); then
		row memcheck FAIL "${errs:-exit $rc} (memcheck.log)"
		failed=1
	else
		row memcheck ok "$errs"
	fi
fi

step "7. Go benchmarks"
l=$(limit 60)
if ((l < 30)); then
	echo "skipped: ${l}s left"
	row gobench skipped "${l}s left of the budget"
else
	run "$l" "$bin" -test.run '^$' -test.bench . -test.benchtime 3x -test.timeout "$((l - 3))s" >"$out/gobench.log" 2>&1
	rc=$?
	grep -E '^Benchmark|FAIL' "$out/gobench.log" | head -12
	if ((rc == 124)); then
		row gobench INCOMPLETE "timed out (gobench.log)"
		incomplete=1
	elif ((rc != 0)); then
		row gobench FAIL "exit $rc (gobench.log)"
		failed=1
	else
		row gobench ok "$(grep -cE '^Benchmark' "$out/gobench.log") results (gobench.log)"
	fi
fi

print_summary
