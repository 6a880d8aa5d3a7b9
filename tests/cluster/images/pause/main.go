// Command pause is the first process of every Pod sandbox on the test cluster's
// real node (containerd's sandbox_image): it holds the Pod's namespaces, reaps
// orphaned processes, and exits when told to stop. Built statically, it is the
// whole image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// As PID 1 of the sandbox, adopted orphans are ours to reap.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
