package mlp

import (
	"fmt"
	"sync"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	gorgoniaio "github.com/wattagg/wattagg/interop/gorgonia"
	"github.com/wattagg/wattagg/tensor"
)

// graphMu serialises building and compiling gorgonia graphs. gorgonia v0.9.18 keeps
// package-level state while it builds one (a group counter that Rectify increments, constant
// nodes shared by every graph) that is not safe for concurrent use: the race detector sees
// two Predict calls collide there. Compiled machines run concurrently; only construction,
// tens of microseconds per graph, waits.
var graphMu sync.Mutex

// net is the model as a gorgonia expression graph over a batch of fixed size: training and
// inference build the same forward pass, so what is trained is what is served.
type net struct {
	g              *G.ExprGraph
	x              *G.Node // [Inputs, batch]: one column per sample
	w1, b1, w2, b2 *G.Node
	logits         *G.Node // [batch, Outputs]
}

// learnables returns the parameter nodes in Names order.
func (n *net) learnables() G.Nodes { return G.Nodes{n.w1, n.b1, n.w2, n.b2} }

// newNet builds the graph with the parameters bound to Dense values that view p's slices
// (no copy) and x bound to a Dense that views xs: the batch's features column by column
// (Inputs rows of batch values; see columns).
func newNet(p *params, batch int, xs []float32) (*net, error) {
	n := &net{g: G.NewGraph()}
	slices, shapes := p.slices(), p.shapes()
	nodes := [4]**G.Node{&n.w1, &n.b1, &n.w2, &n.b2}
	for i, name := range Names {
		d, err := view(name, shapes[i], slices[i])
		if err != nil {
			return nil, err
		}
		*nodes[i] = G.NodeFromAny(n.g, d, G.WithName(name))
	}
	xd := gt.New(gt.WithShape(Inputs, batch), gt.WithBacking(xs))
	n.x = G.NodeFromAny(n.g, xd, G.WithName("x"))

	var err error
	if n.logits, err = n.forward(); err != nil {
		return nil, fmt.Errorf("mlp: building the graph: %w", err)
	}
	return n, nil
}

// columns writes rows (n rows of Inputs features, row by row) into dst as the x node takes
// them: Inputs rows of batch values, sample r in column r. dst must hold Inputs×batch values
// and n ≤ batch; columns past n are left as they are.
func columns(dst, rows []float32, batch int) {
	for r := range len(rows) / Inputs {
		for j, v := range rows[r*Inputs : (r+1)*Inputs] {
			dst[j*batch+r] = v
		}
	}
}

// view is the Dense of a parameter: the interop package's zero-copy view of a tensor over v.
func view(name string, shape []int, v []float32) (*gt.Dense, error) {
	t, err := tensor.FromF32(name, shape, v)
	if err != nil {
		return nil, err
	}
	return gorgoniaio.Dense(t)
}

// forward is logits = (W2 · relu(W1 · X + b1) + b2)ᵀ with X the batch as columns and the
// biases broadcast over the columns. It is relu(x·W1ᵀ + b1)·W2ᵀ + b2 row by row, computed
// with the weights as nn.Linear stores them, [out, in]: products with a transposed weight
// would need gorgonia's Transpose op, which copies the matrix element by element in the
// forward pass and again in the backward pass (a quarter of a training step's time). Only
// the [Outputs, batch] result is transposed.
func (n *net) forward() (*G.Node, error) {
	h, err := G.Mul(n.w1, n.x)
	if err != nil {
		return nil, err
	}
	if h, err = G.BroadcastAdd(h, n.b1, nil, []byte{1}); err != nil {
		return nil, err
	}
	if h, err = G.Rectify(h); err != nil {
		return nil, err
	}
	out, err := G.Mul(n.w2, h)
	if err != nil {
		return nil, err
	}
	if out, err = G.BroadcastAdd(out, n.b2, nil, []byte{1}); err != nil {
		return nil, err
	}
	return G.Transpose(out)
}
