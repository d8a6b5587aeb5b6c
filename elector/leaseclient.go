package elector

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// LeaseClient is what the Engine needs of the API server: the Leases of one namespace, with the
// verbs the side-car's Role grants (deploy/rbac/sidecar-role.yaml): create, update, delete,
// list and watch. client-go's typed LeaseInterface satisfies it, and so does NewLeaseClient's REST client,
// which the side-car uses so as not to link and initialise every built-in API type of client-go's
// clientset (see docs/benchmarks.md, section 5). The Engine calls it from many goroutines at
// once (its informer and every name's worker), so an implementation must be safe for
// concurrent use.
type LeaseClient interface {
	Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error)
	Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// leaseScheme knows only coordination.k8s.io/v1 and the meta types (Status, options, watch
// events) that requests and responses of Leases use.
var (
	leaseScheme         = runtime.NewScheme()
	leaseCodecs         = serializer.NewCodecFactory(leaseScheme)
	leaseParameterCodec = runtime.NewParameterCodec(leaseScheme)
)

func init() {
	metav1.AddToGroupVersion(leaseScheme, schema.GroupVersion{Version: "v1"})
	utilruntime.Must(coordinationv1.AddToScheme(leaseScheme))
}

// leaseClient is a LeaseClient over a REST client for coordination.k8s.io/v1.
type leaseClient struct {
	client    rest.Interface
	namespace string
}

// NewLeaseClient returns a LeaseClient for the Leases of namespace, through the API server that
// c reaches. It does not change c.
func NewLeaseClient(c *rest.Config, namespace string) (LeaseClient, error) {
	config := rest.CopyConfig(c)
	gv := coordinationv1.SchemeGroupVersion
	config.GroupVersion = &gv
	config.APIPath = "/apis"
	config.NegotiatedSerializer = leaseCodecs.WithoutConversion()
	if config.UserAgent == "" {
		config.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	client, err := rest.RESTClientFor(config)
	if err != nil {
		return nil, fmt.Errorf("building the Lease client: %w", err)
	}
	return &leaseClient{client: client, namespace: namespace}, nil
}

func (c *leaseClient) Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	result := &coordinationv1.Lease{}
	err := c.client.Post().Namespace(c.namespace).Resource("leases").
		VersionedParams(&opts, leaseParameterCodec).Body(lease).Do(ctx).Into(result)
	return result, err
}

func (c *leaseClient) Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	result := &coordinationv1.Lease{}
	err := c.client.Put().Namespace(c.namespace).Resource("leases").Name(lease.Name).
		VersionedParams(&opts, leaseParameterCodec).Body(lease).Do(ctx).Into(result)
	return result, err
}

func (c *leaseClient) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return c.client.Delete().Namespace(c.namespace).Resource("leases").Name(name).Body(&opts).Do(ctx).Error()
}

func (c *leaseClient) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	result := &coordinationv1.LeaseList{}
	err := c.client.Get().Namespace(c.namespace).Resource("leases").
		VersionedParams(&opts, leaseParameterCodec).Timeout(timeout).Do(ctx).Into(result)
	return result, err
}

func (c *leaseClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	opts.Watch = true
	return c.client.Get().Namespace(c.namespace).Resource("leases").
		VersionedParams(&opts, leaseParameterCodec).Timeout(timeout).Watch(ctx)
}

// getLease reads the Lease name, nil if there is none. It lists by name: the side-car's Role
// grants list, not get. It looks for the name in the answer rather than trust the field
// selector: a client or fake that ignores it answers with every Lease.
func (e *Engine) getLease(ctx context.Context, name string) (*coordinationv1.Lease, error) {
	list, err := e.leases.List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		return nil, err
	}
	for i := range list.Items {
		if list.Items[i].Name == name {
			return &list.Items[i], nil
		}
	}
	return nil, nil
}
