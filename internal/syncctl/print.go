package syncctl

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"
)

// Output formats, the values of -o; formatJSONPath is followed by "=" and the template.
const (
	formatTable    = ""
	formatWide     = "wide"
	formatJSON     = "json"
	formatYAML     = "yaml"
	formatName     = "name"
	formatJSONPath = "jsonpath"
)

// printOptions is how a list is printed: -o, --no-headers, -A.
type printOptions struct {
	format        string // one of the formats; "jsonpath=<template>" for formatJSONPath
	noHeaders     bool
	allNamespaces bool
}

// documentFormat checks the -o of a command that prints one document: lines or a table for
// people, or json or yaml.
func documentFormat(f string) error {
	switch f {
	case formatTable, formatJSON, formatYAML:
		return nil
	}
	return usagef("unknown output format %q: use json or yaml", f)
}

// validFormat reports whether f is a format -o takes, and checks a jsonpath template.
func validFormat(f string) error {
	switch f {
	case formatTable, formatWide, formatJSON, formatYAML, formatName:
		return nil
	}
	if tmpl, ok := strings.CutPrefix(f, formatJSONPath+"="); ok {
		if err := jsonpath.New("o").Parse(tmpl); err != nil {
			return usagef("-o jsonpath: %v", err)
		}
		return nil
	}
	return usagef("unknown output format %q: use json, yaml, wide, name or jsonpath=<template>", f)
}

// List is the JSON and YAML form of a list of locks or elections.
type List struct {
	Items []Item `json:"items"`
}

// expiresHeader labels the expiry column as the estimate it is.
const expiresHeader = "EXPIRES IN (EST.)"

// sessionPrefix is how much of a session ID the table shows; -o wide shows all of it.
const sessionPrefix = 8

// printTable writes items as a table, the way kubectl get does: NAMESPACE (with allNamespaces),
// NAME, HOLDER (the Pod), SESSION, HELD SINCE, TOKEN, EXPIRES IN (EST.); wide adds LEASE and
// TRANSITIONS and shows whole session IDs. noHeaders leaves the header line out.
func printTable(w io.Writer, items []Item, now time.Time, allNamespaces, wide, noHeaders bool) error {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	var header []string
	if allNamespaces {
		header = append(header, "NAMESPACE")
	}
	header = append(header, "NAME", "HOLDER", "SESSION", "HELD SINCE", "TOKEN", expiresHeader)
	if wide {
		header = append(header, "TRANSITIONS", "LEASE")
	}
	if !noHeaders {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, it := range items {
		var row []string
		if allNamespaces {
			row = append(row, it.Namespace)
		}
		holder, session, since, token := "-", "-", "-", "-"
		if it.Held {
			session = it.Session
			if !wide && len(session) > sessionPrefix {
				session = session[:sessionPrefix]
			}
			holder, session, token = printable(it.Pod), dash(printable(session)), dash(it.Token)
			if it.AcquireTime != nil {
				since = formatAge(now.Sub(*it.AcquireTime))
			}
		}
		row = append(row, it.DisplayName(), holder, session, since, token, formatExpiresIn(it, now))
		if wide {
			row = append(row, fmt.Sprint(it.LeaseTransitions), it.Lease)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// printList writes items as o says; compact (for -w with -o json) writes one line per list.
func printList(w io.Writer, o printOptions, items []Item, now time.Time, compact bool) error {
	if items == nil {
		items = []Item{}
	}
	switch o.format {
	case formatJSON:
		return writeJSON(w, List{Items: items}, compact)
	case formatYAML:
		return writeYAML(w, List{Items: items}, compact)
	case formatName:
		// As kubectl get -o name: KIND/NAME, one per line.
		for _, it := range items {
			if _, err := fmt.Fprintf(w, "%s/%s\n", it.Kind, it.Name); err != nil {
				return err
			}
		}
		return nil
	}
	if tmpl, ok := strings.CutPrefix(o.format, formatJSONPath+"="); ok {
		return writeJSONPath(w, tmpl, List{Items: items})
	}
	if len(items) == 0 && !compact {
		return nil // the caller says "No resources found." on stderr, as kubectl does
	}
	return printTable(w, items, now, o.allNamespaces, o.format == formatWide, o.noHeaders)
}

// writeJSONPath executes a kubectl-style JSONPath template on v's JSON form ({"items": [...]}).
func writeJSONPath(w io.Writer, tmpl string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var data any
	if err := json.Unmarshal(b, &data); err != nil {
		return err
	}
	jp := jsonpath.New("o")
	jp.AllowMissingKeys(true) // as kubectl: a free lock has no holder
	if err := jp.Parse(tmpl); err != nil {
		return usagef("-o jsonpath: %v", err)
	}
	if err := jp.Execute(w, data); err != nil {
		return fmt.Errorf("-o jsonpath: %w", err)
	}
	return nil
}

// writeJSON writes v indented, or on one line when compact.
func writeJSON(w io.Writer, v any, compact bool) error {
	enc := json.NewEncoder(w)
	if !compact {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// writeYAML writes v as YAML; as a document of a stream ("---" first) when stream is set.
func writeYAML(w io.Writer, v any, stream bool) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	if stream {
		b = append([]byte("---\n"), b...)
	}
	_, err = w.Write(b)
	return err
}

// formatAge formats an age like kubectl does ("45s", "3m10s", "2d3h"); a negative one, which a
// clock ahead of this machine's produces, is "0s".
func formatAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return duration.HumanDuration(d)
}

// formatExpiresIn is the EXPIRES IN (EST.) column: the time left until the estimated expiry,
// "expired <age> ago" after it, "-" when free.
func formatExpiresIn(it Item, now time.Time) string {
	if it.ExpireTime == nil {
		return "-"
	}
	left := it.ExpireTime.Sub(now)
	if left <= 0 {
		return "expired " + formatAge(-left) + " ago"
	}
	return formatAge(left)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Description is the JSON and YAML form of describe: the lock or election, and the Pod that
// holds it.
type Description struct {
	Item
	// HolderPod describes the holder's Pod; absent when free.
	HolderPod *PodInfo `json:"holderPod,omitempty"`
}

// PodInfo is what describe tells about the holder's Pod.
type PodInfo struct {
	Name  string `json:"name"`
	Phase string `json:"phase,omitempty"`
	Node  string `json:"node,omitempty"`
	// Ready is the Pod's Ready condition; absent when the Pod has none.
	Ready *bool `json:"ready,omitempty"`
	// Error says why the Pod could not be read ("not found", or the API server's refusal).
	Error string `json:"error,omitempty"`
}

// printDescription writes d for people, like kubectl describe.
func printDescription(w io.Writer, d Description, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	line := func(key, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t%s\n", key, fmt.Sprintf(format, args...))
	}
	when := func(t *time.Time) string {
		if now.Before(*t) {
			return fmt.Sprintf("%s (%s from now, by a clock ahead of this one)", t.Format(time.RFC3339), formatAge(t.Sub(now)))
		}
		return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), formatAge(now.Sub(*t)))
	}
	line("Name", "%s", d.DisplayName())
	line("Kind", "%s", d.Kind)
	line("Namespace", "%s", d.Namespace)
	line("Lease", "%s", d.Lease)
	if d.Held {
		line("Holder", "%s", printable(d.Holder))
		line("  Pod", "%s", printable(d.Pod))
		line("  Session", "%s", dash(printable(d.Session)))
		line("Token", "%s", dash(d.Token))
		if d.AcquireTime != nil {
			line("Held since", "%s", when(d.AcquireTime))
		}
		if d.RenewTime != nil {
			line("Renewed", "%s", when(d.RenewTime))
		}
		line("Expires in", "%s (estimate: renewTime + lease duration, by the holder's clock)", formatExpiresIn(d.Item, now))
	} else {
		line("Holder", "<none> (free)")
		if d.Token != "" {
			line("Last token", "%s", d.Token)
		}
		if d.RenewTime != nil {
			line("Last write", "%s", when(d.RenewTime))
		}
	}
	line("Lease duration", "%s", time.Duration(d.LeaseDurationSeconds)*time.Second)
	line("Transitions", "%d", d.LeaseTransitions)
	if p := d.HolderPod; p != nil {
		if p.Error != "" {
			line("Holder Pod", "%s: %s", printable(p.Name), p.Error)
		} else {
			line("Holder Pod", "%s", printable(p.Name))
			line("  Phase", "%s", dash(p.Phase))
			line("  Node", "%s", dash(p.Node))
			ready := "unknown"
			if p.Ready != nil {
				ready = fmt.Sprint(*p.Ready)
			}
			line("  Ready", "%s", ready)
		}
	}
	return tw.Flush()
}
