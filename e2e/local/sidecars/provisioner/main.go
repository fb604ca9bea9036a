// csi-provisioner stand-in, built on sigs.k8s.io/sig-storage-lib-external-provisioner/v11:
// the controller library the real external-provisioner uses. The library watches PVCs,
// StorageClasses and PVs (informers, work queues, retries with backoff), decides which
// claims are this driver's (the volume.kubernetes.io/storage-provisioner annotation that
// the PV controller sets), creates the PV bound to the claim, records the Provisioning*
// Events, and deletes released PVs with reclaim policy Delete. This file is only the
// CSI side of it, as in external-provisioner's pkg/controller:
//   - Provision: StorageClass parameters (csi.storage.k8s.io/* keys removed), the
//     provisioner Secret (provisioner-secret-name/namespace with ${pvc.name},
//     ${pvc.namespace} and ${pv.name} templates), --extra-create-metadata, access modes and
//     mount options -> CreateVolume -> a PV with the node-publish Secret reference;
//   - Delete: DeleteVolume with the Secret whose name the PV's annotations keep.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	"cloudbucket-csi/e2e/sidecars/internal/csiconn"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v11/controller"
)

const (
	prefix          = "csi.storage.k8s.io/"
	deleteSecretNS  = "volume.kubernetes.io/provisioner-deletion-secret-namespace"
	deleteSecretKey = "volume.kubernetes.io/provisioner-deletion-secret-name"
)

var accessModes = map[v1.PersistentVolumeAccessMode]csi.VolumeCapability_AccessMode_Mode{
	v1.ReadWriteOnce:    csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
	v1.ReadOnlyMany:     csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
	v1.ReadWriteMany:    csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
	v1.ReadWriteOncePod: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
}

type provisioner struct {
	kube          kubernetes.Interface
	ctrl          csi.ControllerClient
	driver        string
	timeout       time.Duration
	extraMetadata bool
}

var _ controller.Provisioner = &provisioner{}

func expand(tmpl string, pvc *v1.PersistentVolumeClaim, pvName string) string {
	r := strings.NewReplacer("${pvc.name}", pvc.Name, "${pvc.namespace}", pvc.Namespace, "${pv.name}", pvName)
	return r.Replace(tmpl)
}

func (p *provisioner) secret(ctx context.Context, ns, name string) (map[string]string, error) {
	if name == "" {
		return nil, nil
	}
	s, err := p.kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out, nil
}

// finalState tells the library whether a failed CreateVolume may still be in progress
// (then it calls Provision again with the same name), as external-provisioner does.
func finalState(err error) controller.ProvisioningState {
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return controller.ProvisioningInBackground
	}
	return controller.ProvisioningFinished
}

func (p *provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	pvc, class, pvName := opts.PVC, opts.StorageClass, opts.PVName
	params := map[string]string{}
	var provNS, provName, nodeNS, nodeName string
	for k, v := range class.Parameters {
		switch k {
		case prefix + "provisioner-secret-name":
			provName = expand(v, pvc, pvName)
		case prefix + "provisioner-secret-namespace":
			provNS = expand(v, pvc, pvName)
		case prefix + "node-publish-secret-name":
			nodeName = expand(v, pvc, pvName)
		case prefix + "node-publish-secret-namespace":
			nodeNS = expand(v, pvc, pvName)
		default:
			if !strings.HasPrefix(k, prefix) {
				params[k] = v
			}
		}
	}
	if p.extraMetadata {
		params[prefix+"pvc/name"] = pvc.Name
		params[prefix+"pvc/namespace"] = pvc.Namespace
		params[prefix+"pv/name"] = pvName
	}
	secrets, err := p.secret(ctx, provNS, provName)
	if err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("provisioner secret: %w", err)
	}
	size := pvc.Spec.Resources.Requests[v1.ResourceStorage]
	var caps []*csi.VolumeCapability
	for _, m := range pvc.Spec.AccessModes {
		caps = append(caps, &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: class.MountOptions}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: accessModes[m]},
		})
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := p.ctrl.CreateVolume(cctx, &csi.CreateVolumeRequest{
		Name: pvName, Parameters: params, Secrets: secrets, VolumeCapabilities: caps,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size.Value()},
	})
	if err != nil {
		return nil, finalState(err), fmt.Errorf("CreateVolume: %w", err)
	}
	capacity := size
	if resp.Volume.CapacityBytes > 0 {
		capacity = *resourceQuantity(resp.Volume.CapacityBytes)
	}
	policy := v1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		policy = *class.ReclaimPolicy
	}
	// The library adds the claimRef, the provisioned-by annotation and the class name.
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: map[string]string{}},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: capacity},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: policy,
			MountOptions:                  class.MountOptions,
			VolumeMode:                    pvc.Spec.VolumeMode,
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: p.driver, VolumeHandle: resp.Volume.VolumeId, VolumeAttributes: resp.Volume.VolumeContext,
			}},
		},
	}
	if provName != "" {
		pv.Annotations[deleteSecretKey] = provName
		pv.Annotations[deleteSecretNS] = provNS
	}
	if nodeName != "" {
		pv.Spec.CSI.NodePublishSecretRef = &v1.SecretReference{Name: nodeName, Namespace: nodeNS}
	}
	log.Printf("provisioned %s for %s/%s (volume %s)", pvName, pvc.Namespace, pvc.Name, resp.Volume.VolumeId)
	return pv, controller.ProvisioningFinished, nil
}

func (p *provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.driver {
		return &controller.IgnoredError{Reason: "not a volume of " + p.driver}
	}
	secrets, err := p.secret(ctx, pv.Annotations[deleteSecretNS], pv.Annotations[deleteSecretKey])
	if err != nil {
		return fmt.Errorf("deletion secret: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if _, err := p.ctrl.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, Secrets: secrets}); err != nil {
		return fmt.Errorf("DeleteVolume: %w", err)
	}
	log.Printf("deleted volume %s of %s", pv.Spec.CSI.VolumeHandle, pv.Name)
	return nil // the library deletes the PV object
}

func newController(ctx context.Context, p *provisioner, resync time.Duration) *controller.ProvisionController {
	return controller.NewProvisionController(ctx, p.kube, p.driver, p,
		controller.LeaderElection(false), // one replica in the e2e cluster
		controller.ResyncPeriod(resync),
		controller.FailedProvisionThreshold(0), // retry until it works, as external-provisioner
	)
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "CSI socket")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig (default: in-cluster)")
	timeout := flag.Duration("timeout", 60*time.Second, "CSI call timeout")
	extra := flag.Bool("extra-create-metadata", false, "pass PVC/PV names as parameters")
	flag.Bool("leader-election", false, "ignored: one replica")
	flag.String("leader-election-namespace", "", "ignored")
	flag.Int("v", 2, "ignored")
	flag.Parse()

	var cfg *rest.Config
	var err error
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		log.Fatal(err)
	}
	conn := csiconn.Dial(*csiAddress)
	p := &provisioner{
		kube: kubernetes.NewForConfigOrDie(cfg), ctrl: csi.NewControllerClient(conn),
		driver: csiconn.DriverName(conn), timeout: *timeout, extraMetadata: *extra,
	}
	log.Printf("provisioning for %s", p.driver)
	newController(context.Background(), p, 15*time.Second).Run(context.Background())
}
