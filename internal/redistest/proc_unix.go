//go:build unix && !linux

package redistest

import "syscall"

// sysProcAttr puts the child in its own process group. Pdeathsig is
// Linux-only, so on other Unix systems a test binary that crashes may leave
// its servers running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

var (
	sigStop syscall.Signal = syscall.SIGSTOP // Pause
	sigCont syscall.Signal = syscall.SIGCONT // Resume, and before SIGTERM in Stop
)
