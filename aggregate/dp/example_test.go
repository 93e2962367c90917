package dp_test

import (
	"fmt"

	"github.com/wattagg/wattagg/aggregate/dp"
)

// The privacy spent by 2250 rounds of the sampled Gaussian mechanism with noise multiplier 1.5
// and sampling rate 0.04 (Opacus's own test case), for δ = 1e-5.
func ExampleAccountant() {
	var a dp.Accountant
	if err := a.Compose(1.5, 0.04, 2250); err != nil {
		fmt.Println(err)
		return
	}
	eps, order, err := a.Epsilon(1e-5)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("ε = %.4f at RDP order %v after %d rounds\n", eps, order, a.Rounds())
	// Output: ε = 7.3291 at RDP order 3.9 after 2250 rounds
}
