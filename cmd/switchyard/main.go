// Command switchyard is a drop-in replacement for kube-proxy. See the
// README and `switchyard --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchyard-proxy/switchyard/cmd/switchyard/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
