package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client sends a contender's messages to a Register. The zero value is not usable: set URL.
// A Client is safe for concurrent use.
type Client struct {
	// URL is the register's base URL, e.g. "http://10.217.0.1:40000".
	URL string
	// HTTP is the client used; nil means one with a 5 s timeout.
	HTTP *http.Client
}

var defaultHTTP = &http.Client{Timeout: 5 * time.Second}

// Begin announces a hold. It reports whether the register accepted the token.
func (c *Client) Begin(ctx context.Context, m Begin) (bool, error) { return c.post(ctx, PathBegin, m) }

// Write writes under a hold. It reports whether the register accepted the token.
func (c *Client) Write(ctx context.Context, m Write) (bool, error) { return c.post(ctx, PathWrite, m) }

// End ends a hold.
func (c *Client) End(ctx context.Context, m End) error {
	_, err := c.post(ctx, PathEnd, m)
	return err
}

// Release reports the Release of a hold.
func (c *Client) Release(ctx context.Context, m Release) error {
	_, err := c.post(ctx, PathRelease, m)
	return err
}

func (c *Client) post(ctx context.Context, path string, m any) (bool, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusConflict:
		return false, nil
	default:
		return false, fmt.Errorf("register %s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
}
