// csi-node-driver-registrar stand-in: registers the CSI driver with kubelet through the
// plugin-registration API (the socket kubelet's plugin watcher finds in plugins_registry).
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"cloudbucket-csi/e2e/sidecars/internal/csiconn"
	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	name, endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type: registerapi.CSIPlugin, Name: r.name, Endpoint: r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		log.Printf("kubelet refused the registration: %s", s.Error)
		os.Exit(1)
	}
	log.Printf("registered with kubelet as %s", r.name)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "CSI socket")
	kubeletPath := flag.String("kubelet-registration-path", "", "the CSI socket's path on the host")
	regDir := flag.String("plugin-registration-path", "/registration", "kubelet's plugins_registry")
	mode := flag.String("mode", "registration", "registration | kubelet-registration-probe")
	flag.Int("v", 2, "ignored")
	flag.Parse()

	if *mode == "kubelet-registration-probe" {
		matches, _ := filepath.Glob(filepath.Join(*regDir, "*-reg.sock"))
		for _, m := range matches {
			if c, err := net.Dial("unix", m); err == nil {
				c.Close()
				os.Exit(0)
			}
		}
		log.Fatalf("no live registration socket in %s", *regDir)
	}
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}
	name := csiconn.DriverName(csiconn.Dial(*csiAddress))
	sock := filepath.Join(*regDir, name+"-reg.sock")
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("listen %s: %v", sock, err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrar{name: name, endpoint: *kubeletPath})
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		<-sigs
		srv.Stop()
		_ = os.Remove(sock)
		os.Exit(0)
	}()
	log.Printf("serving plugin registration for %s on %s", name, sock)
	if err := srv.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
