package arrowio

import (
	"strings"
	"testing"
)

// TestForeign: a message quoting hostile input (Arrow's invalid-UTF-8 error quotes the whole
// string) becomes one printable, bounded line.
func TestForeign(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain \"quoted\" é", "plain \"quoted\" é"},
		{"two\nlines\x00", `two\nlines\x00`},
		{"bad \x87 byte", `bad \x87 byte`},
		{strings.Repeat("x", 500), strings.Repeat("x", foreignMax) + "..."},
	} {
		if got := foreign(c.in); got != c.want {
			t.Errorf("foreign(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
