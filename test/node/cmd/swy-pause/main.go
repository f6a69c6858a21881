// Command swy-pause is the test bed's pod sandbox ("pause") process: it
// holds a pod's namespaces open and does nothing until SIGTERM or SIGINT.
// The bed packs it as the sandbox image of its containerd, so no image is
// pulled from a registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
