// virtmesh-example lists the domains behind a gateway, gets one, and shows the
// typed error of a missing one; the test of the Go client runs it on a real mesh.
//
//	virtmesh-example -address 127.0.0.1:16514 -ca ca.crt -cert client.crt -key client.key NAME
//	virtmesh-example -address 127.0.0.1:16515 -ca ca.crt -token-file token NAME
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	computev1 "github.com/virtmesh/virtmesh/clients/go/gen/virtmesh/compute/v1"
	"github.com/virtmesh/virtmesh/clients/go/virtmesh"
)

func main() {
	var o virtmesh.Options
	var tokenFile string
	flag.StringVar(&o.Address, "address", "127.0.0.1:16514", "gateway host:port")
	flag.StringVar(&o.CAFile, "ca", "", "the mesh's CA certificate")
	flag.StringVar(&o.CertFile, "cert", "", "client certificate")
	flag.StringVar(&o.KeyFile, "key", "", "client key")
	flag.StringVar(&tokenFile, "token-file", "", "file holding a bearer token")
	flag.StringVar(&o.ServerName, "server-name", "", "TLS server name override")
	flag.Parse()
	if tokenFile != "" {
		token, err := os.ReadFile(tokenFile)
		check(err)
		o.Token = strings.TrimSpace(string(token))
	}
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: virtmesh-example [flags] DOMAIN")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := virtmesh.Dial(ctx, o)
	check(err)
	defer client.Close()

	list, err := client.Compute.ListDomains(ctx, &computev1.ListDomainsRequest{})
	check(err)
	for _, domain := range list.Domains {
		fmt.Printf("domain %s %s\n", domain.Name, domain.State)
	}
	got, err := client.Compute.GetDomain(ctx, &computev1.GetDomainRequest{Name: flag.Arg(0)})
	check(err)
	fmt.Printf("get %s %s\n", got.Domain.Name, got.Domain.Uuid)

	_, err = client.Compute.GetDomain(ctx, &computev1.GetDomainRequest{Name: flag.Arg(0) + "-missing"})
	typed, ok := virtmesh.AsError(err)
	if !ok {
		fmt.Fprintf(os.Stderr, "expected a gRPC error, got %v\n", err)
		os.Exit(1)
	}
	line, _ := json.Marshal(map[string]interface{}{"code": typed.Code.String(),
		"reason": typed.Reason, "domain": typed.Domain, "metadata": typed.Metadata})
	fmt.Printf("error %s\n", line)
}

func check(err error) {
	if err != nil {
		if typed, ok := virtmesh.AsError(err); ok {
			fmt.Fprintf(os.Stderr, "virtmesh-example: %v\n", typed)
		} else {
			fmt.Fprintf(os.Stderr, "virtmesh-example: %v\n", err)
		}
		os.Exit(1)
	}
}
