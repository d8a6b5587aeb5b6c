// Command clusterprobe runs inside the local cluster's Pods for the e2e/cluster tests. Each
// one-shot subcommand prints one JSON object on stdout (the test reads it from the container's
// log) and exits 0 when the operation succeeded, 3 when it was refused or forbidden, 1 otherwise.
//
//	clusterprobe serve [-addr :8080] [-text hello]   HTTP server answering "<text> <hostname>"
//	clusterprobe get -url URL [-until-ok]             HTTP GET (retrying until it works with -until-ok)
//	clusterprobe dial -addr HOST:PORT                 one TCP connection attempt
//	clusterprobe lookup -name NAME                    one DNS lookup through the Pod's resolver
//	clusterprobe whoami -configmap NAME               in-cluster client: who am I, may I read NAME
//	clusterprobe routes                               the Pod's IPv4 routing table
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Result is what a one-shot subcommand prints.
type Result struct {
	OK        bool              `json:"ok"`
	Refused   bool              `json:"refused,omitempty"`
	Forbidden bool              `json:"forbidden,omitempty"`
	Error     string            `json:"error,omitempty"`
	Body      string            `json:"body,omitempty"`
	Addrs     []string          `json:"addrs,omitempty"`
	User      string            `json:"user,omitempty"`
	Groups    []string          `json:"groups,omitempty"`
	Server    string            `json:"server,omitempty"`
	Data      map[string]string `json:"data,omitempty"`
	Routes    []string          `json:"routes,omitempty"`
	// Nameservers of /etc/resolv.conf (lookup).
	Nameservers []string `json:"nameservers,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: clusterprobe serve|get|dial|lookup|whoami [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cmd, args := os.Args[1], os.Args[2:]
	if cmd == "serve" {
		if err := serve(ctx, args); err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		return
	}
	var r Result
	switch cmd {
	case "get":
		r = get(ctx, args)
	case "dial":
		r = dial(args)
	case "lookup":
		r = lookup(ctx, args)
	case "whoami":
		r = whoami(ctx, args)
	case "routes":
		r = routes()
	default:
		fmt.Fprintln(os.Stderr, "unknown subcommand", cmd)
		os.Exit(2)
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	switch {
	case r.OK:
	case r.Refused || r.Forbidden:
		os.Exit(3)
	default:
		os.Exit(1)
	}
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", ":8080", "listen address")
	text := fs.String("text", "hello", "text to answer with")
	_ = fs.Parse(args)
	host, _ := os.Hostname()
	srv := &http.Server{
		Addr:              *addr,
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "%s %s", *text, host)
		}),
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Fprintf(os.Stderr, "serving on %s\n", *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func get(ctx context.Context, args []string) Result {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	url := fs.String("url", "", "URL to GET")
	untilOK := fs.Bool("until-ok", false, "retry every 100ms until the GET succeeds")
	_ = fs.Parse(args)
	c := &http.Client{Timeout: 10 * time.Second}
	for {
		r := getOnce(ctx, c, *url)
		if r.OK || !*untilOK || ctx.Err() != nil {
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getOnce(ctx context.Context, c *http.Client, url string) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Result{Error: err.Error()}
	}
	resp, err := c.Do(req)
	if err != nil {
		return errResult(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return errResult(err)
	}
	if resp.StatusCode != http.StatusOK {
		return Result{Error: resp.Status, Body: string(b)}
	}
	return Result{OK: true, Body: string(b)}
}

func dial(args []string) Result {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	addr := fs.String("addr", "", "HOST:PORT")
	_ = fs.Parse(args)
	conn, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return errResult(err)
	}
	conn.Close()
	return Result{OK: true}
}

func lookup(ctx context.Context, args []string) Result {
	fs := flag.NewFlagSet("lookup", flag.ExitOnError)
	name := fs.String("name", "", "host name")
	_ = fs.Parse(args)
	var servers []string
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
				servers = append(servers, f[1])
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	addrs, err := (&net.Resolver{PreferGo: true}).LookupHost(ctx, *name)
	if err != nil {
		r := errResult(err)
		r.Nameservers = servers
		return r
	}
	return Result{OK: true, Addrs: addrs, Nameservers: servers}
}

// errResult classifies a network error: refused means the peer's stack (here always this
// machine's) answered with a reset or an ICMP unreachable.
func errResult(err error) Result {
	r := Result{Error: err.Error()}
	r.Refused = errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused")
	return r
}

func whoami(ctx context.Context, args []string) Result {
	fs := flag.NewFlagSet("whoami", flag.ExitOnError)
	cm := fs.String("configmap", "", "ConfigMap to read in the Pod's namespace")
	_ = fs.Parse(args)
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return Result{Error: err.Error()}
	}
	r := Result{Server: cfg.Host}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	ssr, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		r.Error = "SelfSubjectReview: " + err.Error()
		return r
	}
	r.User, r.Groups = ssr.Status.UserInfo.Username, ssr.Status.UserInfo.Groups
	ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		r.Error = err.Error()
		return r
	}
	got, err := cs.CoreV1().ConfigMaps(string(ns)).Get(ctx, *cm, metav1.GetOptions{})
	switch {
	case apierrors.IsForbidden(err):
		r.Forbidden, r.Error = true, err.Error()
	case err != nil:
		r.Error = err.Error()
	default:
		r.OK, r.Data = true, got.Data
	}
	return r
}

// routes lists /proc/net/route as "DESTINATION/PREFIX via GATEWAY dev IFACE".
func routes() Result {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return Result{Error: err.Error()}
	}
	r := Result{OK: true}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, gw, mask := hexIP(f[1]), hexIP(f[2]), hexIP(f[7])
		ones, _ := net.IPMask(mask.To4()).Size()
		r.Routes = append(r.Routes, fmt.Sprintf("%s/%d via %s dev %s", dst, ones, gw, f[0]))
	}
	return r
}

// hexIP decodes an address of /proc/net/route: 8 hex digits, little-endian.
func hexIP(h string) net.IP {
	var v uint32
	_, _ = fmt.Sscanf(h, "%x", &v)
	return net.IPv4(byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}
