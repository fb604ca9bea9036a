// Package csiconn dials a CSI driver's unix socket, waiting for it to appear.
package csiconn

import (
	"context"
	"log"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to the CSI socket (path or unix:// URL).
func Dial(address string) *grpc.ClientConn {
	if !strings.HasPrefix(address, "unix://") {
		address = "unix://" + address
	}
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", address, err)
	}
	return conn
}

// DriverName asks the driver for its name, retrying until it answers.
func DriverName(conn *grpc.ClientConn) string {
	client := csi.NewIdentityClient(conn)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := client.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.GetName()
		}
		log.Printf("waiting for the CSI driver: %v", err)
		time.Sleep(time.Second)
	}
}
