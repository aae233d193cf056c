//go:build linux

package redistest

import "syscall"

// sysProcAttr makes the child die with the thread that started it
// (Pdeathsig) and puts it in its own process group so that terminal signals
// aimed at the test binary's group do not reach it directly.
//
// Pdeathsig fires when the OS thread that forked the child exits, not the
// process. The Go runtime only retires threads whose goroutine exited while
// locked with runtime.LockOSThread, so do not start servers from such
// goroutines.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

var (
	sigStop syscall.Signal = syscall.SIGSTOP // Pause
	sigCont syscall.Signal = syscall.SIGCONT // Resume, and before SIGTERM in Stop
)
