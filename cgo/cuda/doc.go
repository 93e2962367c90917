// Package cuda is wattagg's GPU device: a device.Device for NVIDIA GPUs with the capabilities
// the rules look for (device.Robust: order statistics, Gram matrix, distances; device.Optimizer:
// fused server-optimizer steps; device.ModSummer: the modular sum of secure aggregation), and
// device-resident buffers with their operations (the same ones, Gaussian noise, scaling) on top.
//
// # The driver
//
// No CUDA header or library is needed to build: the package opens libcuda.so.1 (the NVIDIA
// driver's user-space library) with dlopen when a GPU is first asked for, resolves the driver
// API functions it uses with dlsym and calls them through those pointers. With no driver, no GPU
// or no cgo (CGO_ENABLED=0 builds a stub), Discover and Open return an error saying why
// (ErrNoDriver, ErrNoDevice, ErrNoCgo), so one binary runs everywhere and falls back to the CPU.
// The kernels are PTX embedded from kernels/cuda, JIT-compiled by the driver at Open.
//
// CUDA contexts are per OS thread and a goroutine can change threads between two cgo calls, so
// every driver call binds the GPU's primary context in the same C function that makes the call;
// no goroutine is locked to a thread and any goroutine may use a GPU. Waiting for the GPU blocks
// the thread (blocking synchronisation) instead of spinning a core.
//
// # Memory
//
// Device memory comes from cuMemAlloc only (never managed memory), sized from cuMemGetInfo: a
// job that cannot fit is an ErrOutOfMemory error before anything is allocated. Host data reaches
// the GPU by asynchronous copies from page-locked memory only: pageable inputs (Go memory, mapped
// files) are copied into page-locked staging buffers first, so no Go pointer is ever held by the
// driver beyond a call; memory from allocPinned is copied directly.
//
// # The pipeline
//
// Jobs over host memory (WeightedSum, Accumulator.Add and Emit, Median, Gram, ...) cut the
// coordinate space into slabs and run slab k on one of WithStreams streams, each with its own
// device and page-locked buffers: while the GPU computes slab k, the copy engine moves slab k+1
// and the host stages slab k+2 and hands the finished chunks of slab k-1 to the Output. The
// device-resident variants (upload, weightedSumResident, gramResident, ...) skip the transfers.
//
// A job's Output callbacks may run callback-free work (Optimize, Gram, SqDistances, the
// device-resident operations) on the same GPU: it goes to a second set of streams and buffers,
// as a server optimizer steps each chunk of its weighted sum (see GPU).
//
// # Results
//
// WeightedSum and the Accumulator perform the CPU kernels' operations in the same order (f32:
// rounded product then rounded sum; f64: fused multiply-add; the same input grouping) and are
// bit-identical to the CPU device, non-finite results reported the same way. So are the order
// statistics (Select, Median, TrimmedMean: the CPU's sorting network and f32 operations, signed
// zeros included), Optimize and Step (the f32 operations of device.OptimJob), and ModSum. The
// f64 sums of Gram, SqDistances and Select's distances and norms add exact terms in an order of
// the GPU's own: deterministic for a given GPU, job and slab size, within f64 rounding of the
// CPU's (γ_N·Σ|terms|), not bit-identical. The other operations document their arithmetic.
package cuda
