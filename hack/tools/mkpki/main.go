// Command mkpki writes the certificates, keys and kubeconfigs of the local single-node cluster
// into a directory, keeping whatever is already there (see internal/pki).
//
//	mkpki -dir /var/run/metaparticle-sync/pki -node metaparticle-sync-node \
//	  -node-ip 10.217.0.1 -service-ip 10.217.1.1 -server https://10.217.0.1:6443
package main

import (
	"flag"
	"fmt"
	"net"
	"os"

	"github.com/metaparticle-io/sync/internal/pki"
)

func main() {
	fs := flag.NewFlagSet("mkpki", flag.ExitOnError)
	c := pki.Cluster{}
	fs.StringVar(&c.Dir, "dir", "", "output directory (required)")
	fs.StringVar(&c.Name, "cluster", "metaparticle-sync", "cluster name in the kubeconfigs")
	fs.StringVar(&c.NodeName, "node", "", "node name (required)")
	nodeIP := fs.String("node-ip", "", "node InternalIP and API server advertise address (required)")
	serviceIP := fs.String("service-ip", "", "ClusterIP of the kubernetes Service (required)")
	fs.StringVar(&c.Server, "server", "", "API server URL for the kubeconfigs (required)")
	_ = fs.Parse(os.Args[1:])
	c.NodeIP, c.ServiceIP = net.ParseIP(*nodeIP), net.ParseIP(*serviceIP)
	if err := c.Ensure(); err != nil {
		fmt.Fprintln(os.Stderr, "mkpki:", err)
		os.Exit(1)
	}
}
