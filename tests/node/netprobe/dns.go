package main

// The node test's cluster DNS: A records for the names given (the pods'
// Service names the broker's config uses), NXDOMAIN for every other name,
// no answer but NOERROR for other types of a known name. Anything that is
// not a DNS query gets the listener's answer, so the matrix's UDP probe
// works against this pod too.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

func serveDNS(pairs []string) {
	records := map[string][4]byte{}
	for _, p := range pairs {
		name, ip, ok := strings.Cut(p, "=")
		v4 := net.ParseIP(ip).To4()
		if !ok || v4 == nil {
			fmt.Fprintf(os.Stderr, "netprobe: bad record %q (NAME=IPV4)\n", p)
			os.Exit(2)
		}
		records[strings.ToLower(strings.TrimSuffix(name, "."))] = [4]byte(v4)
	}
	pc, err := net.ListenPacket("udp", ":53")
	if err != nil {
		fmt.Fprintf(os.Stderr, "netprobe: dns udp: %v\n", err)
		os.Exit(1)
	}
	l, err := net.Listen("tcp", ":53")
	if err != nil {
		fmt.Fprintf(os.Stderr, "netprobe: dns tcp: %v\n", err)
		os.Exit(1)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				continue
			}
			reply, err := answerDNS(buf[:n], records)
			if err != nil {
				reply = []byte(answer)
			}
			_, _ = pc.WriteTo(reply, from)
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				continue
			}
			go serveDNSConn(c, records)
		}
	}()
	fmt.Printf("dns: %d records\n", len(records))
	waitForSignal()
}

func serveDNSConn(c net.Conn, records map[string][4]byte) {
	defer c.Close()
	for {
		var n uint16
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			return
		}
		q := make([]byte, n)
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		reply, err := answerDNS(q, records)
		if err != nil {
			return
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
		if _, err := c.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

// answerDNS answers a single-question query.
func answerDNS(q []byte, records map[string][4]byte) ([]byte, error) {
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil, errors.New("not a one-question query")
	}
	var labels []string
	i := 12
	for {
		if i >= len(q) {
			return nil, errors.New("truncated name")
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return nil, errors.New("bad label")
		}
		labels = append(labels, string(q[i:i+l]))
		i += l
	}
	if i+4 > len(q) {
		return nil, errors.New("truncated question")
	}
	qtype := binary.BigEndian.Uint16(q[i : i+2])
	question := q[12 : i+4]
	ip, known := records[strings.ToLower(strings.Join(labels, "."))]
	h := make([]byte, 12)
	copy(h[0:2], q[0:2])
	flags := uint16(0x8000 | 0x0400 | uint16(q[2]&0x01)<<8) // QR, AA, RD copied
	if !known {
		flags |= 3 // NXDOMAIN
	}
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint16(h[4:6], 1)
	out := append(h, question...)
	if known && qtype == 1 {
		binary.BigEndian.PutUint16(out[6:8], 1)
		// name pointer to offset 12, type A, class IN, TTL 5, 4 bytes
		out = append(out, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4)
		out = append(out, ip[:]...)
	}
	return out, nil
}
