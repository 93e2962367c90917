//go:build !unix

package main

import "path/filepath"

// fileID identifies a file; without inodes, by its absolute cleaned path.
type fileID struct{ path string }

// idOf returns the identity of the file at path.
func idOf(path string) (fileID, bool) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fileID{}, false
	}
	return fileID{filepath.Clean(abs)}, true
}
