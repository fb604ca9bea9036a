// livenessprobe stand-in: answers HTTP /healthz with the driver's CSI Probe.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"cloudbucket-csi/e2e/sidecars/internal/csiconn"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "CSI socket")
	port := flag.Int("health-port", 9808, "HTTP port")
	timeout := flag.Duration("probe-timeout", 3*time.Second, "Probe timeout")
	flag.Int("v", 2, "ignored")
	flag.Parse()
	client := csi.NewIdentityClient(csiconn.Dial(*csiAddress))
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		resp, err := client.Probe(ctx, &csi.ProbeRequest{})
		if err != nil || (resp.GetReady() != nil && !resp.GetReady().GetValue()) {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	log.Printf("serving /healthz on :%d", *port)
	log.Fatal(http.ListenAndServe(fmt.Sprintf(":%d", *port), nil))
}
