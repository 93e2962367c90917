package cuda

import "github.com/wattagg/wattagg/device"

// The "cuda" backend makes GPUs reachable as device.Open("cuda:0") and listed by
// device.Discover in any binary that imports this package; loading the driver waits until then.
func init() {
	device.Register(device.Backend{
		Kind:     "cuda",
		Discover: func() ([]device.Info, error) { return Discover() },
		Open: func(index int) (device.Device, error) {
			g, err := Open(index)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return g, nil
		},
	})
}
