package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// probe is a minimal RESP2 connection used for readiness checks. It avoids
// go-redis on purpose: no pools, no retries, no background goroutines, and
// a dial failure is reported immediately, which is what a poll loop wants.
type probe struct {
	conn net.Conn      // raw TCP connection
	r    *bufio.Reader // buffered reader over conn
}

// dialProbe connects to addr; every later command must finish before
// timeout has elapsed from now.
func dialProbe(addr string, timeout time.Duration) (*probe, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		conn.Close()
		return nil, err
	}
	return &probe{conn: conn, r: bufio.NewReader(conn)}, nil
}

func (p *probe) Close() error { return p.conn.Close() }

// do sends one command and returns its reply. Only the reply types that the
// harness needs are supported: simple strings, errors, integers and bulk
// strings (a nil bulk string is returned as "").
func (p *probe) do(args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(p.conn, b.String()); err != nil {
		return "", err
	}
	line, err := p.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("redistest: empty RESP reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redistest: redis error: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("redistest: bad bulk length %q", line)
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2) // payload + CRLF
		if _, err := io.ReadFull(p.r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	default:
		return "", fmt.Errorf("redistest: unsupported RESP reply %q", line)
	}
}

// infoField returns the value of "name:value" in an INFO-style reply
// (INFO, CLUSTER INFO).
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}
