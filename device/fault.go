package device

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
)

// ErrFault reports memory a job could not read: a mapped file truncated (or a page otherwise
// lost) while a job reads it. Without the guard the process would die of SIGBUS.
var ErrFault = errors.New("memory fault")

// FaultError says where a job faulted. The round engine names the input that holds Addr.
type FaultError struct {
	Addr uintptr
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("%v at address %#x: was a mapped file truncated while in use?", ErrFault, e.Addr)
}

func (e *FaultError) Unwrap() error { return ErrFault }

// Guard runs fn with faults on memory (SIGBUS on a truncated mapping, SIGSEGV on an unmapped
// page) turned into a *FaultError instead of a crash of the process (debug.SetPanicOnFault, for
// this goroutine only). Devices guard every worker; callers guard what they read of mapped
// memory themselves.
func Guard(fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if re, ok := p.(runtime.Error); ok {
			if a, ok := re.(interface{ Addr() uintptr }); ok {
				err = &FaultError{Addr: a.Addr()}
				return
			}
		}
		panic(p)
	}()
	return fn()
}
