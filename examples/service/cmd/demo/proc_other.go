//go:build unix && !linux

package main

import "syscall"

// sysProcAttr puts a replica in its own process group, so that a Ctrl-C in the
// terminal reaches only the demo, which stops the replicas itself.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
