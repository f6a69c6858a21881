// Command swy-echo serves the lab's echo protocol (see package echo) on the
// given TCP and UDP ports and prints READY once it listens. It stops on
// SIGTERM or SIGINT.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchyard-proxy/switchyard/test/echo"
)

func main() {
	name := flag.String("name", "", "name to answer with")
	tcp := flag.String("tcp", "", "comma-separated TCP ports")
	udp := flag.String("udp", "", "comma-separated UDP ports")
	flag.Parse()
	if err := run(*name, *tcp, *udp); err != nil {
		fmt.Fprintln(os.Stderr, "swy-echo:", err)
		os.Exit(1)
	}
}

func run(name, tcp, udp string) error {
	tp, err := echo.ParsePorts(tcp)
	if err != nil {
		return fmt.Errorf("-tcp: %w", err)
	}
	up, err := echo.ParsePorts(udp)
	if err != nil {
		return fmt.Errorf("-udp: %w", err)
	}
	s, err := echo.Listen(name, tp, up)
	if err != nil {
		return err
	}
	s.Serve()
	fmt.Println("READY")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return s.Close()
}
