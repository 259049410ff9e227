// netprobe: the node test's only workload besides the broker. One static
// binary (no libc, no shell) that is the pause container, a listener that
// answers on TCP and UDP ports, and the prober that tries destinations from
// inside a pod's network namespace.
//
//	netprobe pause
//	netprobe listen tcp:8200 udp:53 ...
//	netprobe probe [-timeout 1s] tcp:172.30.0.1:6443 udp:10.88.0.5:53 ...
//	netprobe dns NAME=IPV4 ...   (a DNS server on :53, UDP and TCP)
//
// A listener answers every TCP connection and every UDP datagram with
// "netprobe-ok\n". The prober calls a TCP destination reachable when the
// handshake completes, a UDP one when the answer arrives; a closed port, a
// reset and a silent drop all count as unreachable (the node test first
// proves every listener is alive without the enforcer).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const answer = "netprobe-ok\n"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netprobe pause | listen PROTO:PORT... | probe [-timeout D] PROTO:HOST:PORT...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
		waitForSignal()
	case "listen":
		listen(os.Args[2:])
	case "probe":
		os.Exit(probe(os.Args[2:]))
	case "dns":
		serveDNS(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "netprobe: unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
}

func waitForSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}

func listen(specs []string) {
	for _, spec := range specs {
		proto, port, ok := strings.Cut(spec, ":")
		if !ok {
			fmt.Fprintf(os.Stderr, "netprobe: bad listen spec %q\n", spec)
			os.Exit(2)
		}
		addr := ":" + port
		switch proto {
		case "tcp":
			l, err := net.Listen("tcp", addr)
			if err != nil {
				fmt.Fprintf(os.Stderr, "netprobe: listen %s: %v\n", spec, err)
				os.Exit(1)
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						continue
					}
					go func() {
						_ = c.SetDeadline(time.Now().Add(5 * time.Second))
						_, _ = c.Write([]byte(answer))
						_ = c.Close()
					}()
				}
			}()
		case "udp":
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				fmt.Fprintf(os.Stderr, "netprobe: listen %s: %v\n", spec, err)
				os.Exit(1)
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						continue
					}
					_, _ = pc.WriteTo([]byte(answer), from)
				}
			}()
		default:
			fmt.Fprintf(os.Stderr, "netprobe: unknown protocol in %q\n", spec)
			os.Exit(2)
		}
		fmt.Printf("listening %s\n", spec)
	}
	waitForSignal()
}

// probe prints one line per destination, "DEST open" or "DEST closed: why",
// in the order given, and exits 0 (the verdicts are the output).
func probe(args []string) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	timeout := fs.Duration("timeout", time.Second, "per destination")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	type result struct {
		i    int
		line string
	}
	dests := fs.Args()
	out := make(chan result, len(dests))
	for i, d := range dests {
		go func(i int, d string) {
			if err := try(d, *timeout); err != nil {
				out <- result{i, fmt.Sprintf("%s closed: %v", d, err)}
			} else {
				out <- result{i, d + " open"}
			}
		}(i, d)
	}
	lines := make([]string, len(dests))
	for range dests {
		r := <-out
		lines[r.i] = r.line
	}
	for _, l := range lines {
		fmt.Println(l)
	}
	return 0
}

func try(dest string, timeout time.Duration) error {
	proto, hostport, ok := strings.Cut(dest, ":")
	if !ok || (proto != "tcp" && proto != "udp") {
		return fmt.Errorf("bad destination %q", dest)
	}
	c, err := net.DialTimeout(proto, hostport, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if proto == "tcp" {
		// The handshake crossed the firewall both ways; TLS servers (the
		// API server, the kubelet) would not send the listener's answer.
		return nil
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != answer {
		return fmt.Errorf("unexpected answer %q", got)
	}
	return nil
}
