package device

import "testing"

// must returns v, failing the test with err's message if err is not nil: a constructor's error
// names the cause, which a discarded error would hide behind a later nil dereference.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
