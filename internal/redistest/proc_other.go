//go:build !unix

package redistest

import "syscall"

// sysProcAttr has nothing to add on non-Unix systems.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// Pause and Resume are not supported: there is no SIGSTOP/SIGCONT. A zero
// signal makes them fail with a clear error instead of silently succeeding.
var (
	sigStop syscall.Signal
	sigCont syscall.Signal
)
