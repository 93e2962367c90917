# wattagg — build, test, benchmark. `make demo` runs the main job; `make test` runs the tests.
GO      ?= go
BIN     := bin/wattagg
PKGS    := ./...

.PHONY: all build demo test test-interop vet fmt-check generate generate-check bench bench-go fuzz clean energy nocgo-check pyarrow

all: build

# Three binaries: wattagg, and beside it wattagg-server, which `wattagg serve|push|pull` run, and
# wattagg-plot, which draws the plots of `wattagg bench --out`.
build:
	$(GO) build -o bin/ ./cmd/wattagg ./cmd/wattagg-server ./cmd/wattagg-plot

# The main job: a 16-client federation of a 25M-parameter model, aggregated and reported.
demo: build
	./$(BIN) demo

# Everything CI runs: formatting, vet (both tag sets), generated code up to date, the tests
# with the assembly, under the race detector, and with the pure-Go kernels.
test: fmt-check vet generate-check test-interop
	$(GO) test -count=1 $(PKGS)
	$(GO) test -count=1 -race $(PKGS)
	$(GO) test -count=1 -tags purego $(PKGS)

# A Python with pyarrow for the tests of the README's pyarrow clients (PyPI is out of reach and
# Debian 12 has no python3-pyarrow): Debian unstable's, in a chroot under ~/.cache/wattagg.
# Then: export WATTAGG_PYARROW="chroot ... python3" (the last line printed) and make test.
pyarrow:
	scripts/pyarrow-sid.sh

# The federation showcase (interop/gorgonia/cmd/federation): 10 clients train the digits MLP
# with gorgonia and push to wattagg's aggregation server on a loopback port, an inference node
# answers each round's model over HTTP, then the attack table; plots, tables and results.json
# in bin/federation/.
.PHONY: federation
federation:
	cd interop/gorgonia && $(GO) run ./cmd/federation -out $(CURDIR)/bin/federation

# The gorgonia interop is a nested module (gorgonia stays out of the core's module graph).
test-interop:
	cd interop/gorgonia && $(GO) vet ./... && $(GO) test -count=1 ./... && $(GO) test -count=1 -race -short ./...

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags purego $(PKGS)
	GOARCH=arm64 $(GO) vet ./kernels/ ./tensor/...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Regenerate the AVX2 assembly from kernels/_gen (avo; its own go.mod).
# ./... covers every generator program of the module: kernels/_gen/robust makes robust_amd64.s.
# kernels/_gen/optim makes optim_amd64.s and optim_stubs_amd64.go (optimizer steps, mod-sum).
generate:
	cd kernels/_gen && $(GO) generate ./...

# Fail if the committed assembly differs from what the generator produces.
# ./... runs each generator program's check, kernels/_gen/robust's TestGeneratedUpToDate too.
# kernels/_gen/optim's TestGeneratedUpToDate checks optim_amd64.s and optim_stubs_amd64.go.
generate-check:
	cd kernels/_gen && $(GO) test -count=1 ./...

# Benchmarks beside their floors, measured in the same run.
bench: build bench-go
	./$(BIN) bench all --out bench-report

bench-go:
	$(GO) test -run '^$$' -bench . -benchtime 10x ./kernels/ ./aggregate/ ./tensor/...

# Fuzzing: every fuzz target of every package, one after another. FUZZTIME is a duration (30s)
# or a count of executions (10000000x); FUZZPKGS narrows the packages. New inputs the fuzzer
# finds interesting are minimised for at most 100 executions: the default (60 s each) made
# slow targets look hung for minutes after every new input.
FUZZTIME ?= 20s
FUZZPKGS ?= ./tensor/safetensors/ ./tensor/arrowio/ ./kernels/ ./server/
fuzz:
	@for p in $(FUZZPKGS); do \
		for f in $$($(GO) test -list 'Fuzz.*' $$p | grep ^Fuzz); do \
			echo "== $$p $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x -parallel $${FUZZPAR:-2} $$p || exit 1; \
		done; \
	done

clean:
	rm -rf bin

# Energy: devices and meters, a quick calibration, and the policies compared on this machine.
energy: build
	./$(BIN) devices
	./$(BIN) calibrate --quick
	./$(BIN) bench energy

# The energy, planner and CLI packages build without cgo (NVML then reports unavailable).
nocgo-check:
	CGO_ENABLED=0 $(GO) build ./energy/ ./sched/ ./aggregate/ ./cmd/wattagg/ ./cmd/wattagg-server/
	CGO_ENABLED=0 $(GO) test -count=1 ./energy/ ./sched/

.PHONY: ptx gpu-check

# Regenerate the PTX of the CUDA kernels from kernels/cuda/*.cu and check it with ptxas for
# sm_80 and sm_90 (needs nvcc; building and testing wattagg never do: the PTX is committed).
ptx:
	kernels/cuda/gen.sh

# Build, here (cgo, no GPU needed), what the GPU check runs on a machine with a GPU and driver but
# no Go: the test and benchmark binary of cgo/cuda, the CLI (for the energy commands) and the
# script, into .gpu/. There: `bash .gpu/run.sh` in the repository root (README, GPU section).
# The test binary is stripped of its symbol table and DWARF (stack traces keep their names), so
# that .gpu/ (about 20 MB) travels well within a device call's 64 MiB.
gpu-check: build
	rm -rf .gpu && mkdir -p .gpu
	$(GO) test -c -ldflags='-s -w' -o .gpu/cuda.test ./cgo/cuda
	cp $(BIN) .gpu/wattagg
	cp cgo/cuda/gpu-check.sh .gpu/run.sh
	chmod +x .gpu/run.sh
	@echo "built .gpu/ ($$(du -sh .gpu | cut -f1)); on the GPU machine, in the repository root: bash .gpu/run.sh"
