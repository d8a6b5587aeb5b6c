package syncctl

import (
	"context"
	"fmt"
	"sort"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/metaparticle-io/sync/internal/version"
)

// injectorSelector selects the injector Deployments the chart installs (its selector labels).
var injectorSelector = labels.Set{"app.kubernetes.io/name": "metaparticle-sync", "app.kubernetes.io/component": "injector"}.String()

// Versions is the JSON and YAML form of version.
type Versions struct {
	Client    string            `json:"client"`
	Injectors []InjectorVersion `json:"injectors,omitempty"`
}

// InjectorVersion is one injector Deployment of the cluster and the release it runs.
type InjectorVersion struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Version is the Deployment's app.kubernetes.io/version label (the chart's appVersion).
	Version string `json:"version"`
}

func (c *cli) versionCommand() *cobra.Command {
	var clientOnly bool
	var format string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print syncctl's release and the release of each injector in the cluster",
		Long: fmt.Sprintf(`Print syncctl's release and, unless --client, the release of every injector Deployment of
the cluster (labelled %s, as the chart labels it unless nameOverride is set),
from its app.kubernetes.io/version label. It needs list on deployments in every namespace. Side-cars older than the injector are found with the Pod
annotation metaparticle.io/injector-version (docs/install.md, Upgrade).`, injectorSelector),
		Example: c.examples(`
  %[1]s version
  %[1]s version --client -o json`),
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := documentFormat(format); err != nil {
				return err
			}
			v := Versions{Client: version.Version}
			var err error
			if !clientOnly {
				v.Injectors, err = c.injectorVersions(cmd.Context())
			}
			if perr := printVersions(c, format, v, clientOnly); perr != nil {
				return perr
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "Print syncctl's release only; do not ask the cluster")
	cmd.Flags().StringVarP(&format, "output", "o", "", "Output format: json or yaml (default: lines)")
	return cmd
}

// injectorVersions lists the injector Deployments of every namespace.
func (c *cli) injectorVersions(ctx context.Context) ([]InjectorVersion, error) {
	cs, err := c.client()
	if err != nil {
		return nil, err
	}
	cctx, cancel := c.callContext(ctx)
	defer cancel()
	l, err := cs.AppsV1().Deployments(metav1.NamespaceAll).List(cctx, metav1.ListOptions{LabelSelector: injectorSelector})
	if err != nil {
		return nil, c.explain(err)
	}
	out := make([]InjectorVersion, 0, len(l.Items))
	for _, d := range l.Items {
		out = append(out, InjectorVersion{Namespace: d.Namespace, Name: d.Name, Version: d.Labels["app.kubernetes.io/version"]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out, nil
}

// printVersions writes v: lines for people (a cluster without an injector says so), or JSON/YAML.
func printVersions(c *cli, format string, v Versions, clientOnly bool) error {
	switch format {
	case formatJSON:
		return writeJSON(c.out, v, false)
	case formatYAML:
		return writeYAML(c.out, v, false)
	}
	fmt.Fprintf(c.out, "Client: %s %s\n", c.display, v.Client)
	if clientOnly {
		return nil
	}
	if len(v.Injectors) == 0 {
		_, err := fmt.Fprintln(c.out, "Injector: none found (no Deployment labelled "+injectorSelector+")")
		return err
	}
	for _, in := range v.Injectors {
		fmt.Fprintf(c.out, "Injector: %s/%s %s\n", in.Namespace, in.Name, dash(in.Version))
	}
	return nil
}
