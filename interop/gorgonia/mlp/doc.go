// Package mlp is the model of the federation showcase: a two-layer perceptron over the UCI
// digits (64 inputs, a ReLU hidden layer, 10 logits), trained and run with gorgonia, whose
// parameters travel as a wattagg tensor.Set of f32 tensors laid out as PyTorch's nn.Linear
// lays them out:
//
//	fc1.weight [hidden, 64]   fc1.bias [hidden]
//	fc2.weight [10, hidden]   fc2.bias [10]
//
//	logits = fc2.weight · relu(fc1.weight · x + fc1.bias) + fc2.bias
//
// so a file aggregated by wattagg loads into torch.nn.Sequential(Linear, ReLU, Linear) as
// it is. Train is a client's local training (it starts from the global model it is given and
// returns its own, with num_examples metadata for FedAvg); Model answers predictions from a
// global model viewed in place, without copying its tensors.
package mlp
