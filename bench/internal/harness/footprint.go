package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metaparticle-io/sync/sdk"
)

// RelaxedTimings are the side-car flags of the many-locks footprint: at the default timings,
// holding that many locks would take more renewals per second than the side-car's renewal
// budget allows (QPS 100, twice server.DefaultKubeAPIQPS, a flag of the side-car), and more
// than client-go's baseline gets (QPS 50); see docs/benchmarks.md.
var RelaxedTimings = []string{"--lease-duration=60s", "--renew-deadline=45s", "--renew-period=30s"}

// footprintResult holds the side-car's memory and start-up figures and the baseline's.
type footprintResult struct {
	startup                     Summary
	idle, one, many             float64 // MiB, VmRSS
	idleDetail, oneDetail       map[string]float64
	manyDetail                  map[string]float64
	manyAcquire                 time.Duration
	manyLost                    int
	baseIdle, baseOne, baseMany float64
	baseIdleDetail              map[string]float64
	baseOneDetail               map[string]float64
	baseManyDetail              map[string]float64
	baseManyAcquire             time.Duration
}

// process is a child process whose stdout lines are delivered on lines.
type process struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		l.b.Reset()
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

func startProcess(path string, args ...string) (*process, error) {
	p := &process{cmd: exec.Command(path, args...), lines: make(chan string, 16), stderr: &lockedBuffer{}}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		_, _ = io.Copy(io.Discard, out)
		close(p.lines)
	}()
	return p, nil
}

// waitLine waits for a stdout line starting with prefix.
func (p *process) waitLine(prefix string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return fmt.Errorf("%s exited before printing %q: %s", p.cmd.Path, prefix, p.stderr.tail())
			}
			if strings.HasPrefix(l, prefix) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("%s did not print %q within %s: %s", p.cmd.Path, prefix, timeout, p.stderr.tail())
		}
	}
}

// memory returns the memory lines of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...)
// in MiB.
func (p *process) memory() (map[string]float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return nil, err
	}
	m, err := ParseStatus(string(b))
	if err != nil {
		return nil, err
	}
	if _, ok := m["VmRSS"]; !ok {
		return nil, errors.New("no VmRSS in /proc status")
	}
	return m, nil
}

// rss returns VmRSS of the process in MiB, and all its memory lines.
func (p *process) rss() (float64, map[string]float64, error) {
	m, err := p.memory()
	if err != nil {
		return 0, nil, err
	}
	return m["VmRSS"], m, nil
}

// ParseStatus reads the memory lines given in kB (VmRSS, VmHWM, RssAnon, RssFile, ...) from the
// text of /proc/<pid>/status, in MiB.
func ParseStatus(status string) (map[string]float64, error) {
	m := map[string]float64{}
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !(strings.HasPrefix(k, "Vm") || strings.HasPrefix(k, "Rss")) {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return nil, fmt.Errorf("unexpected %s line %q", k, line)
		}
		kb, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, err
		}
		m[k] = kb / 1024
	}
	return m, nil
}

// stop sends SIGTERM and waits up to 20 s, then kills.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// launchElector starts the side-car binary against the envtest API server and returns it with
// its lock API address and the time from exec to a 200 from /readyz.
func (b *Bench) launchElector(bin, kubeconfig, ns, pod string, extra ...string) (*process, string, time.Duration, error) {
	api, err := freePort()
	if err != nil {
		return nil, "", 0, err
	}
	health, err := freePort()
	if err != nil {
		return nil, "", 0, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", api)
	args := append([]string{"--kubeconfig=" + kubeconfig, "--pod-name=" + pod, "--namespace=" + ns,
		"--listen=" + addr, fmt.Sprintf("--health-listen=127.0.0.1:%d", health)}, extra...)
	hc := &http.Client{Timeout: time.Second}
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", health)
	t0 := time.Now()
	p, err := startProcess(bin, args...)
	if err != nil {
		return nil, "", 0, err
	}
	err = waitFor(time.Minute, 2*time.Millisecond, func() bool {
		resp, err := hc.Get(readyz)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	d := time.Since(t0)
	if err != nil {
		p.kill()
		return nil, "", 0, fmt.Errorf("the side-car was not ready within a minute: %s", p.stderr.tail())
	}
	return p, addr, d, nil
}

// footprint measures the real side-car binary, and a minimal client-go leader election program
// as the baseline, holding nothing, one lock, and many locks.
func (b *Bench) footprint(ctx context.Context, electorBin, holderBin string, launches, many int, settle time.Duration) (footprintResult, error) {
	var res footprintResult
	ns, err := b.Namespace(ctx, "bench-footprint", false)
	if err != nil {
		return res, err
	}
	kubeconfig, err := b.writeKubeconfig()
	if err != nil {
		return res, err
	}

	// Start-up to ready, and the idle and one-lock figures from the first launch.
	var startups []time.Duration
	for i := 0; i < launches; i++ {
		p, addr, d, err := b.launchElector(electorBin, kubeconfig, ns, fmt.Sprintf("footprint-%d", i))
		if err != nil {
			return res, err
		}
		startups = append(startups, d)
		if i == 0 {
			time.Sleep(settle)
			if res.idle, res.idleDetail, err = p.rss(); err != nil {
				p.kill()
				return res, err
			}
			c, _ := sdk.NewClient(sdk.WithAddress(addr))
			if err := c.NewLock("footprint-one").Acquire(ctx); err != nil {
				p.kill()
				return res, fmt.Errorf("acquiring one lock: %w", err)
			}
			time.Sleep(settle)
			res.one, res.oneDetail, err = p.rss()
			c.Close()
			if err != nil {
				p.kill()
				return res, err
			}
		}
		p.stop()
	}
	res.startup = Summarize(startups)

	// Many locks, ours and the baseline's at the same time.
	var (
		wg      sync.WaitGroup
		baseErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		baseErr = b.footprintBaseline(holderBin, kubeconfig, ns, many, settle, &res)
	}()
	err = b.footprintMany(ctx, electorBin, kubeconfig, ns, many, settle, &res)
	wg.Wait()
	return res, errors.Join(err, baseErr)
}

func (b *Bench) footprintMany(ctx context.Context, bin, kubeconfig, ns string, many int, settle time.Duration, res *footprintResult) error {
	p, addr, _, err := b.launchElector(bin, kubeconfig, ns, "footprint-many", append([]string{fmt.Sprintf("--max-names=%d", many)}, RelaxedTimings...)...)
	if err != nil {
		return err
	}
	defer p.kill() // the holds are left to expire: releasing them would only load the API server
	c, _ := sdk.NewClient(sdk.WithAddress(addr))
	defer c.Close()
	locks := make([]*sdk.Lock, many)
	var (
		mu   sync.Mutex
		errs []error
	)
	t0 := time.Now()
	parallel(many, 50, func(i int) {
		l := c.NewLock(fmt.Sprintf("footprint-many-%d", i))
		if err := l.Acquire(ctx); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
			return
		}
		locks[i] = l
	})
	res.manyAcquire = time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("acquiring %d locks: %w", many, err)
	}
	time.Sleep(settle)
	if res.many, res.manyDetail, err = p.rss(); err != nil {
		return err
	}
	res.manyLost = lostOf(locks)
	if res.manyLost > 0 {
		b.Anomaly("footprint: %d of %d locks were lost while the side-car held them", res.manyLost, many)
	}
	return nil
}

// footprintBaseline runs bench/cmd/clientgo-holder: a minimal program holding N Leases with
// client-go leader election, one LeaderElector per Lease, all on one client.
func (b *Bench) footprintBaseline(bin, kubeconfig, ns string, many int, settle time.Duration, res *footprintResult) error {
	run := func(leases int, dst *float64, detail *map[string]float64, extra ...string) (time.Duration, error) {
		t0 := time.Now()
		p, err := startProcess(bin, append([]string{"--kubeconfig=" + kubeconfig, "--namespace=" + ns,
			fmt.Sprintf("--prefix=clientgo-%d", leases), fmt.Sprintf("--leases=%d", leases)}, extra...)...)
		if err != nil {
			return 0, err
		}
		defer p.kill()
		want := "ready"
		if leases > 0 {
			want = fmt.Sprintf("held %d", leases)
		}
		if err := p.waitLine(want, 5*time.Minute); err != nil {
			return 0, err
		}
		d := time.Since(t0)
		time.Sleep(settle)
		*dst, *detail, err = p.rss()
		return d, err
	}
	if _, err := run(0, &res.baseIdle, &res.baseIdleDetail); err != nil {
		return err
	}
	if _, err := run(1, &res.baseOne, &res.baseOneDetail); err != nil {
		return err
	}
	d, err := run(many, &res.baseMany, &res.baseManyDetail, "--lease-duration=60s", "--renew-deadline=45s", "--retry-period=30s")
	res.baseManyAcquire = d
	return err
}
