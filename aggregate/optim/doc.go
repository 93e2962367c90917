// Package optim holds the server optimizers of adaptive federated optimization (Reddi et al.,
// 2021, "Adaptive Federated Optimization", Algorithm 2: FedAdagrad, FedAdam, FedYogi) and
// server momentum (FedAvgM, Hsu et al., 2019), and their state between rounds.
//
// An optimizer is a stage of a sum: the engine averages the clients' deltas from the global
// model, Δ = Σ_k w_k·x_k / Σ_k w_k − x_t, and hands each finished chunk of Δ to the
// optimizer, which applies one fused step per coordinate (device.OptimJob) and writes the new
// model in place and its moments beside it. Composed after a private mean ("dp-fixed,fedadam")
// or a secure sum ("secagg,fedadam") it steps from their averaged delta instead.
package optim
