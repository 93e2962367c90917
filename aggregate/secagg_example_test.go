package aggregate_test

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// Three clients quantise and mask their updates; the masks cancel in the server's modular sum,
// which decodes to the mean of what they sent (within the quantisation step).
func ExampleSecureSum() {
	ctx := context.Background()
	q, _ := aggregate.NewSecAggQuantizer(16, 1)
	r := rand.NewChaCha8([32]byte{42}) // clients use crypto/rand-seeded generators
	var pair01, pair02, pair12 aggregate.Seed
	r.Read(pair01[:])
	r.Read(pair02[:])
	r.Read(pair12[:])
	pairs := []map[int]aggregate.Seed{{1: pair01, 2: pair02}, {0: pair01, 2: pair12}, {0: pair02, 1: pair12}}
	var masked []*tensor.Set
	for id, update := range []*tensor.Set{client(0.5, -0.25), client(0.25, 0), client(-0.25, 0.5)} {
		u, _ := q.QuantizeSet(update, r)
		c := &aggregate.SecAggClient{ID: id, Pairs: pairs[id]}
		if err := c.Mask(ctx, u); err != nil {
			fmt.Println(err)
			return
		}
		masked = append(masked, u)
	}
	rule, _ := aggregate.NewSecureSum(aggregate.WithSecAggBits(16), aggregate.WithSecAggRange(1))
	mean, _, err := rule.Aggregate(ctx, masked, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := mean.At(0).F32()
	fmt.Printf("%.3f\n", w)
	// Output: [0.167 0.083]
}
