package secagg_test

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/tensor"
)

// client is a one-tensor update "w".
func client(values ...float32) *tensor.Set {
	t, err := tensor.FromF32("w", []int{len(values)}, values)
	if err != nil {
		panic(err)
	}
	s, err := tensor.NewSet(t)
	if err != nil {
		panic(err)
	}
	return s
}

// Three clients quantise and mask their updates; the masks cancel in the server's modular sum,
// which decodes to the mean of what they sent (within the quantisation step).
func ExampleSum() {
	ctx := context.Background()
	q, err := secagg.NewQuantizer(16, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	r := rand.NewChaCha8([32]byte{42}) // clients use crypto/rand-seeded generators
	var pair01, pair02, pair12 secagg.Seed
	r.Read(pair01[:])
	r.Read(pair02[:])
	r.Read(pair12[:])
	pairs := []map[int]secagg.Seed{{1: pair01, 2: pair02}, {0: pair01, 2: pair12}, {0: pair02, 1: pair12}}
	var masked []*tensor.Set
	for id, update := range []*tensor.Set{client(0.5, -0.25), client(0.25, 0), client(-0.25, 0.5)} {
		u, err := q.QuantizeSet(update, r)
		if err != nil {
			fmt.Println(err)
			return
		}
		c := &secagg.Client{ID: id, Pairs: pairs[id]}
		if err := c.Mask(ctx, u); err != nil {
			fmt.Println(err)
			return
		}
		masked = append(masked, u)
	}
	rule, err := secagg.New(secagg.WithBits(16), secagg.WithRange(1))
	if err != nil {
		fmt.Println(err)
		return
	}
	mean, _, err := aggregate.Aggregate(ctx, rule, masked, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := mean.At(0).F32()
	fmt.Printf("%.3f\n", w)
	// Output: [0.167 0.083]
}
