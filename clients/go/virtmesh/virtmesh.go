// Package virtmesh dials a virtmesh gateway and turns its errors into typed ones.
//
// The generated clients are under gen/virtmesh/<driver>/v1; this package only
// adds what every caller needs: TLS with the mesh's CA, a client certificate or a
// bearer token (or both), and google.rpc.ErrorInfo as an *Error.
package virtmesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	computev1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/compute/v1"
	gatewayv1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/gateway/v1"
	ifacev1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/iface/v1"
	networkv1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/network/v1"
	nodedevv1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/nodedev/v1"
	nwfilterv1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/nwfilter/v1"
	secretv1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/secret/v1"
	storagev1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/storage/v1"
)

// Options say where the gateway is and who the caller is. CAFile is always
// needed; then a client certificate (CertFile and KeyFile: the mutual-TLS port,
// 16514 by default), a bearer token (Token: the token-only port, 16515 by
// default, or on top of a certificate), or both.
type Options struct {
	Address    string // host:port
	CAFile     string // the mesh's CA (PEM)
	CertFile   string // client certificate (PEM), with KeyFile
	KeyFile    string
	Token      string // bearer token
	ServerName string // TLS server name, when it is not the host in Address
}

// Client holds one connection to a gateway and a stub of every service behind it.
type Client struct {
	Conn      *grpc.ClientConn
	Compute   computev1.ComputeServiceClient
	Storage   storagev1.StorageServiceClient
	Network   networkv1.NetworkServiceClient
	NWFilter  nwfilterv1.NWFilterServiceClient
	Secret    secretv1.SecretServiceClient
	NodeDev   nodedevv1.NodeDeviceServiceClient
	Interface ifacev1.InterfaceServiceClient
	Gateway   gatewayv1.GatewayServiceClient
}

// Dial connects to the gateway (lazily, as grpc.DialContext does).
func Dial(ctx context.Context, o Options, extra ...grpc.DialOption) (*Client, error) {
	config, err := tlsConfig(o)
	if err != nil {
		return nil, err
	}
	options := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(config))}
	if o.Token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearer(o.Token)))
	}
	conn, err := grpc.DialContext(ctx, o.Address, append(options, extra...)...)
	if err != nil {
		return nil, err
	}
	return &Client{
		Conn:      conn,
		Compute:   computev1.NewComputeServiceClient(conn),
		Storage:   storagev1.NewStorageServiceClient(conn),
		Network:   networkv1.NewNetworkServiceClient(conn),
		NWFilter:  nwfilterv1.NewNWFilterServiceClient(conn),
		Secret:    secretv1.NewSecretServiceClient(conn),
		NodeDev:   nodedevv1.NewNodeDeviceServiceClient(conn),
		Interface: ifacev1.NewInterfaceServiceClient(conn),
		Gateway:   gatewayv1.NewGatewayServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

func tlsConfig(o Options) (*tls.Config, error) {
	if o.CAFile == "" {
		return nil, errors.New("virtmesh: CAFile is required")
	}
	ca, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("virtmesh: no certificate in %s", o.CAFile)
	}
	config := &tls.Config{RootCAs: roots, ServerName: o.ServerName, MinVersion: tls.VersionTLS12}
	switch {
	case o.CertFile != "" && o.KeyFile != "":
		pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	case o.CertFile != "" || o.KeyFile != "":
		return nil, errors.New("virtmesh: CertFile and KeyFile go together")
	case o.Token == "":
		return nil, errors.New("virtmesh: a client certificate or a token is required")
	}
	return config, nil
}

// bearer sends "authorization: Bearer <token>" with every call (over TLS only).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// Error is a failed call with its google.rpc.ErrorInfo: Reason is libvirt's
// error code name ("VIR_ERR_NO_DOMAIN") or the gateway's own reason, Domain is
// "libvirt.org" for libvirt's errors.
type Error struct {
	Code     codes.Code
	Message  string
	Reason   string
	Domain   string
	Metadata map[string]string
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("%s: %s", e.Code, e.Message)
	}
	return fmt.Sprintf("%s: %s (%s)", e.Code, e.Message, e.Reason)
}

// AsError is the *Error of a failed call (its status and the first ErrorInfo in
// grpc-status-details-bin); false for an error that carries no gRPC status.
func AsError(err error) (*Error, bool) {
	var typed *Error
	if errors.As(err, &typed) {
		return typed, true
	}
	st, ok := status.FromError(err)
	if !ok || st == nil || st.Code() == codes.OK {
		return nil, false
	}
	typed = &Error{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}}
	for _, detail := range st.Proto().GetDetails() {
		if !strings.HasSuffix(detail.GetTypeUrl(), "/google.rpc.ErrorInfo") {
			continue
		}
		var info errdetails.ErrorInfo
		if protov1.Unmarshal(detail.GetValue(), &info) == nil {
			typed.Reason, typed.Domain = info.GetReason(), info.GetDomain()
			for key, value := range info.GetMetadata() {
				typed.Metadata[key] = value
			}
			break
		}
	}
	return typed, true
}
