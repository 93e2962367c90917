// Package secagg is the arithmetic of mask-based secure aggregation (Bonawitz et al., 2017,
// "Practical Secure Aggregation for Privacy-Preserving Machine Learning"): clients quantise
// their update into the integers modulo 2^32 (Quantizer) and add masks that cancel in the sum
// (Client.Mask); the server (Sum, a rule of aggregate's round engine) adds the masked vectors
// modulo 2^32 as they arrive, removes what did not cancel (Recovery) and dequantises the sum,
// chunk by chunk. The server never sees an individual update in the clear. Key agreement and
// secret sharing — how clients agree on pairwise seeds and how the seeds of dropped clients are
// recovered — are out of scope: seeds are inputs here.
package secagg
