package optnames

import "testing"

func TestOf(t *testing.T) {
	names := []string{"Open", "Parse", "Create"}
	for set, want := range map[uint]string{0: "", 1: "Open", 2: "Parse", 3: "Open and Parse", 7: "Open, Parse and Create", 5: "Open and Create"} {
		if got := Of(set, names); got != want {
			t.Errorf("Of(%b) = %q, want %q", set, got, want)
		}
	}
}
