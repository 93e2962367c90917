package client_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/wattagg/wattagg/server/client"
)

// The connection's options go to New and a call's to that call; a weight given to Pull is
// refused by name, before anything is downloaded.
func ExampleOption() {
	c, err := client.New("http://127.0.0.1:8080", client.WithToken("client-17-token"))
	if err != nil {
		panic(err)
	}
	err = c.Pull(context.Background(), 0, "global.safetensors", client.WithWeight(1200))
	fmt.Println(err)
	fmt.Println(errors.Is(err, client.ErrOption))
	// Output:
	// invalid client option: WithWeight is an option of Push, PushFile and PushSet; Pull does not take it
	// true
}
