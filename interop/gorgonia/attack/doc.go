// Package attack holds the poisoned clients of the federation showcase's attack table: label
// flipping (a client trains honestly on wrong labels) and update scaling (a client sends a
// model pushed far along, or against, its own update). Robust aggregation rules are judged by
// how much of the honest accuracy survives them.
package attack
