package syncctl

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/clientcmd"
)

// explain turns an error of a request to the API server into one that says what went wrong in
// terms of the cluster: unreachable, timed out, unauthorized, forbidden.
func (c *cli) explain(err error) error { return c.explainNeeding(err, "get, list and watch on leases") }

// explainNeeding is explain for a command whose requests need the permissions needs.
func (c *cli) explainNeeding(err error, needs string) error {
	server := c.host
	if server == "" {
		server = "(unknown)"
	}
	var status apierrors.APIStatus
	var uerr *url.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no answer from the API server at %s within %s (pass --request-timeout to wait longer)", server, defaultCallTimeout)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("unauthorized: the API server at %s refused the credentials of the current context: %s", server, apiMessage(err))
	case apierrors.IsForbidden(err):
		msg := apiMessage(err)
		if !strings.Contains(msg, "forbidden") {
			msg = "forbidden: " + msg
		}
		return fmt.Errorf("%s (reading needs %s)", msg, needs)
	case errors.As(err, &status):
		return errors.New(apiMessage(err))
	case errors.As(err, &uerr):
		return fmt.Errorf("cannot reach the API server at %s: %v", server, uerr.Err)
	}
	return err
}

// apiMessage is the API server's message of a Status error.
func apiMessage(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Message != "" {
		return status.Status().Message
	}
	return err.Error()
}

// errNoConfig says that there is no kubeconfig to use, nor a server on the command line.
var errNoConfig = errors.New("no cluster configured: set $KUBECONFIG, pass --kubeconfig or --server, or create ~/.kube/config")

// explainConfig explains an error of loading the kubeconfig.
func explainConfig(err error) error {
	if clientcmd.IsEmptyConfig(err) {
		return errNoConfig
	}
	return fmt.Errorf("kubeconfig: %w", err)
}
