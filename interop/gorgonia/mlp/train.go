package mlp

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	gorgoniaio "github.com/wattagg/wattagg/interop/gorgonia"
	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/tensor"
)

// ErrOption is returned for a training option out of range.
var ErrOption = errors.New("mlp: invalid option")

// Optimizer names a local optimizer.
type Optimizer int

// The local optimizers. SGD is FedAvg's (McMahan et al. 2017); Adam's moments start at zero in
// every call, since they are not part of the federated model.
const (
	SGD Optimizer = iota
	Adam
)

type config struct {
	epochs, batch int
	lr            float64
	opt           Optimizer
	seed          uint64
}

// Option configures Train.
type Option func(*config) error

// WithEpochs sets the number of passes over the client's data (default 5).
func WithEpochs(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 10000 {
			return fmt.Errorf("%w: %d epochs", ErrOption, n)
		}
		c.epochs = n
		return nil
	}
}

// WithBatchSize sets the minibatch size (default 16). A last, smaller batch of an epoch is
// trained as it is, not dropped.
func WithBatchSize(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 1<<16 {
			return fmt.Errorf("%w: batch size %d", ErrOption, n)
		}
		c.batch = n
		return nil
	}
}

// WithLearningRate sets the step size (default 0.3 for SGD, 0.005 for Adam).
func WithLearningRate(lr float64) Option {
	return func(c *config) error {
		if !(lr > 0) || math.IsInf(lr, 0) {
			return fmt.Errorf("%w: learning rate %v", ErrOption, lr)
		}
		c.lr = lr
		return nil
	}
}

// WithOptimizer picks SGD (the default) or Adam.
func WithOptimizer(o Optimizer) Option {
	return func(c *config) error {
		if o != SGD && o != Adam {
			return fmt.Errorf("%w: optimizer %d", ErrOption, o)
		}
		c.opt = o
		return nil
	}
}

// WithSeed seeds the order in which samples are visited (default 0). Give each client its own.
func WithSeed(seed uint64) Option {
	return func(c *config) error { c.seed = seed; return nil }
}

// Train is one client's local training: it starts from global (which it does not modify: a
// mapped file stays read-only), runs minibatch SGD or Adam on data for some epochs with
// gorgonia's autodiff, minimising the mean cross-entropy of softmax(logits), and returns the
// client's model as a new Set with the same tensors in the same order, f32, and metadata
// num_examples = data.Len(). The result depends only on global, data and the options: the
// same seed gives the same bits.
func Train(ctx context.Context, global *tensor.Set, data digits.Dataset, opts ...Option) (*tensor.Set, error) {
	c := config{epochs: 5, batch: 16}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	if c.lr == 0 { // not set: WithLearningRate refuses 0
		c.lr = 0.3
		if c.opt == Adam {
			c.lr = 0.005
		}
	}
	if data.Len() == 0 || len(data.X) != data.Len()*Inputs {
		return nil, fmt.Errorf("%w: %d samples with %d features", ErrInput, data.Len(), len(data.X))
	}
	p, err := readParams(global, true)
	if err != nil {
		return nil, err
	}
	batch := min(c.batch, data.Len())
	tr, err := newTrainer(p, batch, c)
	if err != nil {
		return nil, err
	}
	defer tr.vm.Close()

	r := rand.New(rand.NewPCG(c.seed, 0x7a1))
	order := make([]int, data.Len())
	for i := range order {
		order[i] = i
	}
	for range c.epochs {
		r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for start := 0; start < len(order); start += batch {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := tr.step(data, order[start:min(start+batch, len(order))]); err != nil {
				return nil, err
			}
		}
	}
	return tr.result(global, data.Len())
}

// trainer holds the graph of one client's training: the forward pass, the loss
// -Σ T ⊙ log softmax(logits) and its gradients, a machine and a solver.
type trainer struct {
	net    *net
	xs     []float32 // Inputs×batch, the x node's backing (samples as columns)
	ts     []float32 // batch×Outputs, the target node's backing
	vm     G.VM
	solver G.Solver
}

func newTrainer(p *params, batch int, c config) (*trainer, error) {
	graphMu.Lock()
	defer graphMu.Unlock()
	tr := &trainer{xs: make([]float32, Inputs*batch), ts: make([]float32, batch*Outputs)}
	n, err := newNet(p, batch, tr.xs)
	if err != nil {
		return nil, err
	}
	tr.net = n
	// The target holds one-hot rows divided by the batch's real size, and zero rows for
	// padding: the loss is then the mean cross-entropy of the real rows whatever the batch's
	// size, and one graph serves the last, short batch too.
	target := G.NodeFromAny(n.g, gt.New(gt.WithShape(batch, Outputs), gt.WithBacking(tr.ts)), G.WithName("target"))
	logp, err := G.LogSoftMax(n.logits)
	if err != nil {
		return nil, fmt.Errorf("mlp: building the loss: %w", err)
	}
	prod, err := G.HadamardProd(target, logp)
	if err != nil {
		return nil, fmt.Errorf("mlp: building the loss: %w", err)
	}
	sum, err := G.Sum(prod)
	if err != nil {
		return nil, fmt.Errorf("mlp: building the loss: %w", err)
	}
	loss, err := G.Neg(sum)
	if err != nil {
		return nil, fmt.Errorf("mlp: building the loss: %w", err)
	}
	if _, err := G.Grad(loss, n.learnables()...); err != nil {
		return nil, fmt.Errorf("mlp: gradients: %w", err)
	}
	tr.vm = G.NewTapeMachine(n.g, G.BindDualValues(n.learnables()...))
	switch c.opt {
	case Adam:
		tr.solver = G.NewAdamSolver(G.WithLearnRate(c.lr))
	default:
		tr.solver = G.NewVanillaSolver(G.WithLearnRate(c.lr))
	}
	return tr, nil
}

// step trains on the samples idx (at most the batch size) of data.
func (tr *trainer) step(data digits.Dataset, idx []int) error {
	clear(tr.xs)
	clear(tr.ts)
	w := float32(1) / float32(len(idx))
	batch := len(tr.ts) / Outputs
	for r, i := range idx {
		columns(tr.xs[r:], data.Row(i), batch)
		tr.ts[r*Outputs+data.Y[i]] = w
	}
	defer tr.vm.Reset()
	if err := tr.vm.RunAll(); err != nil {
		return fmt.Errorf("mlp: training step: %w", err)
	}
	if err := tr.solver.Step(G.NodesToValueGrads(tr.net.learnables())); err != nil {
		return fmt.Errorf("mlp: solver step: %w", err)
	}
	return nil
}

// result returns the trained parameters as a Set that views them (the interop package's
// FromDense on the parameter nodes' values), with global's tensor order.
func (tr *trainer) result(global *tensor.Set, n int) (*tensor.Set, error) {
	byName := map[string]*tensor.Tensor{}
	for _, node := range tr.net.learnables() {
		d, ok := node.Value().(*gt.Dense)
		if !ok {
			return nil, fmt.Errorf("mlp: %s holds %T after training", node.Name(), node.Value())
		}
		t, err := gorgoniaio.FromDense(node.Name(), d)
		if err != nil {
			return nil, err
		}
		if err := t.CheckFinite(); err != nil {
			return nil, fmt.Errorf("mlp: training diverged: %w", err)
		}
		byName[node.Name()] = t
	}
	out, err := tensor.NewSet()
	if err != nil {
		return nil, err
	}
	for _, t := range global.Tensors() { // readParams checked that these are the four
		if err := out.Add(byName[t.Name]); err != nil {
			return nil, err
		}
	}
	out.Metadata[NumExamplesKey] = strconv.Itoa(n)
	return out, nil
}
