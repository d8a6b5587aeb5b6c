package image

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Retarget moves an image reference to another registry and path prefix, keeping the image's
// last path element and tag: Retarget("docker.io/metaparticle/sync-elector:0.1.0",
// "registry.example.com/platform") is "registry.example.com/platform/sync-elector:0.1.0".
func Retarget(ref, registry string) (string, error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("image reference %q must be a full name with a tag: %w", ref, err)
	}
	registry = strings.TrimSuffix(registry, "/")
	if registry == "" || strings.Contains(registry, "://") {
		return "", fmt.Errorf("registry %q must be a host and an optional path, without a scheme (for example ghcr.io/acme)", registry)
	}
	out := registry + "/" + path.Base(tag.RepositoryStr()) + ":" + tag.TagStr()
	if _, err := name.NewTag(out, name.StrictValidation); err != nil {
		return "", fmt.Errorf("registry %q: %w", registry, err)
	}
	return out, nil
}

// Push writes idx, with every manifest and blob it holds, to the registry as ref. Credentials
// come from the Docker configuration ($DOCKER_CONFIG or ~/.docker/config.json, as docker login,
// crane auth login and helm registry login write it); the registry's certificate is checked
// against the system roots ($SSL_CERT_FILE replaces them). For a registry on localhost, loopback,
// a private (RFC 1918) address or a .local name, go-containerregistry falls back to plain HTTP
// when TLS fails, and the error then names both attempts. It returns the digest the index was
// stored under.
func Push(ctx context.Context, ref string, idx v1.ImageIndex) (v1.Hash, error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image reference %q must be a full name with a tag: %w", ref, err)
	}
	if err := remote.WriteIndex(tag, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return v1.Hash{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	return idx.Digest()
}
