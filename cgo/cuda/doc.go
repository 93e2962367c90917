// Package cuda is wattagg's GPU device: a device.Device for NVIDIA GPUs with the capabilities
// the rules look for (device.Robust: order statistics, Gram matrix, distances; device.Optimizer:
// fused server-optimizer steps; device.ModSummer: the modular sum of secure aggregation).
//
// Its public surface is Discover, Open and the options, the errors, and the GPU with the methods
// of device.Device and of those capability interfaces; importing the package registers the
// "cuda" backend of device.Open and device.Discover. The device-resident operations underneath
// (tensors uploaded once and summed, ordered, multiplied, stepped, scaled or noised in device
// memory, page-locked buffers) are unexported: the benchmark and the tests use them, and they
// become API when a caller needs them.
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
// driver beyond a call. Every device allocation and page-locked buffer is counted by purpose
// while the GPU holds it (buffers.go); the tests assert that none outlives its owner or Close.
//
// # The pipeline
//
// Jobs over host memory (WeightedSum, Accumulator.Add and Emit, Select, Gram, ...) cut the
// coordinate space into slabs and run slab k on one of WithStreams streams, each with its own
// device and page-locked buffers: while the GPU computes slab k, the copy engine moves slab k+1
// and the host stages slab k+2 and hands the finished chunks of slab k-1 to the Output. Every
// region of a slab's buffers, every segment's output and every kernel parameter table starts
// 16-byte aligned, whatever the job's chunk layout: a GPU faults on a misaligned load or store
// (CUDA_ERROR_MISALIGNED_ADDRESS, which loses the context), where x86 does not. A cancelled
// context stops a job between slabs and is reported as ctx.Err() even when the job fitted in
// the slabs already queued.
//
// A job's Output callbacks may run callback-free work (Optimize, Gram, SqDistances) on the same
// GPU: it goes to a second set of streams and buffers, as a server optimizer steps each chunk of
// its weighted sum (see GPU).
//
// # Results
//
// WeightedSum and the Accumulator perform the CPU kernels' operations in the same order (f32:
// rounded product then rounded sum; f64: fused multiply-add; the same input grouping) and are
// bit-identical to the CPU device, non-finite results reported the same way. So are the order
// statistics of Select (the CPU's sorting network, kernels.SortNetwork, and f32 operations,
// signed zeros included), Optimize (the f32 operations of device.OptimJob) and ModSum. The f64
// sums of Gram, SqDistances and Select's distances and norms add exact terms in an order of the
// GPU's own: deterministic for a given GPU, job and slab size, within f64 rounding of the CPU's
// (γ_N·Σ|terms|), not bit-identical.
//
// Two caveats to the bit-identity, both measured by no test here (the fake driver runs the
// kernels on x86, whose arithmetic behaves as the CPU device's):
//
//   - NaN payloads. A GPU's floating-point arithmetic returns a canonical NaN (f32: 0x7fffffff)
//     whatever the NaN operands, where x86 returns the first NaN operand's payload, quieted.
//     Every NaN that passes through the kernels' arithmetic therefore leaves with the canonical
//     payload: a NaN input of a sum or an optimizer step, a 16-bit or i8 input widened by 0 + x
//     (common.cuh's wa_ld32, as the CPU widens it, which turns -0 into +0), a NaN scaled on
//     output. Results without NaNs are unaffected; WeightedSum, Emit and Select report a NaN
//     result as a *tensor.NonFiniteError rather than hand it out; the conformance tests compare
//     NaNs as NaNs. Data that is only copied keeps its bits, and the f16/bf16 conversions (bit
//     operations) keep the payload they are given. Making the payloads the CPU's would take a
//     NaN test around every operation: not done.
//   - Noise. The device-resident noise (Philox4x32-10 and Box-Muller, kernels/cuda/noise.cu)
//     draws the same counters as its Go reference, but its log and sincospi are libdevice's
//     (the PTX holds rcp.approx seeds refined by Newton steps; CUDA documents at most 1 and 2 ulp
//     of error), not Go's math.Log and math.Sincos: the normals agree with the reference within
//     a few ulp, not bit for bit, and so do the noised values. (The fake computes them with the
//     C library's log, sin and cos: a third set of last bits.) The DP rules draw their noise on
//     the host from ChaCha8; this noise is for simulations.
package cuda
