// Package optnames names sets of a package's functions for the errors of options given to a
// function that does not take them ("Calibrate and NewPlanner does not take it").
package optnames

import "strings"

// Of lists the functions whose bits are set in set, bit i naming names[i]: "Open",
// "Open and Parse", "Open, Parse and Create".
func Of(set uint, names []string) string {
	var in []string
	for i, n := range names {
		if set&(1<<i) != 0 {
			in = append(in, n)
		}
	}
	if len(in) < 2 {
		return strings.Join(in, "")
	}
	return strings.Join(in[:len(in)-1], ", ") + " and " + in[len(in)-1]
}
