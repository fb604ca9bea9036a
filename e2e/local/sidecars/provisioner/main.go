// csi-provisioner stand-in: dynamic provisioning for one driver on a small cluster.
//
// Every second it lists PVCs and PVs (a single-node e2e cluster holds a handful):
//   - a pending PVC whose StorageClass names this driver gets CreateVolume and a PV
//     pre-bound to it (claimRef), which the PV controller then binds;
//   - a Released PV this driver provisioned, with reclaim policy Delete, gets DeleteVolume,
//     then the PV is deleted.
// Secrets follow the external-provisioner's StorageClass parameters
// (csi.storage.k8s.io/provisioner-secret-*, node-publish-secret-*, ${pvc.name} and
// ${pvc.namespace} templates).
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
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	prefix          = "csi.storage.k8s.io/"
	provisionedBy   = "pv.kubernetes.io/provisioned-by"
	deleteSecretNS  = "volume.kubernetes.io/provisioner-deletion-secret-namespace"
	deleteSecretKey = "volume.kubernetes.io/provisioner-deletion-secret-name"
)

type provisioner struct {
	kube          kubernetes.Interface
	ctrl          csi.ControllerClient
	driver        string
	timeout       time.Duration
	extraMetadata bool
}

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

func (p *provisioner) event(ctx context.Context, pvc *v1.PersistentVolumeClaim, typ, reason, msg string) {
	ev := &v1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: pvc.Name + ".", Namespace: pvc.Namespace},
		InvolvedObject: v1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID, APIVersion: "v1"},
		Reason:         reason, Message: msg, Type: typ,
		Source:         v1.EventSource{Component: p.driver + "_csi-provisioner"},
		FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now(), Count: 1,
	}
	_, _ = p.kube.CoreV1().Events(pvc.Namespace).Create(ctx, ev, metav1.CreateOptions{})
}

func (p *provisioner) provision(ctx context.Context, pvc *v1.PersistentVolumeClaim, sc map[string]*StorageClassInfo) {
	if pvc.Spec.VolumeName != "" || pvc.Status.Phase != v1.ClaimPending || pvc.Spec.StorageClassName == nil {
		return
	}
	class, ok := sc[*pvc.Spec.StorageClassName]
	if !ok {
		return
	}
	pvName := "pvc-" + string(pvc.UID)
	if _, err := p.kube.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{}); err == nil {
		return
	}
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
		p.event(ctx, pvc, v1.EventTypeWarning, "ProvisioningFailed", fmt.Sprintf("provisioner secret: %v", err))
		return
	}
	size := pvc.Spec.Resources.Requests[v1.ResourceStorage]
	var caps []*csi.VolumeCapability
	for _, m := range pvc.Spec.AccessModes {
		mode := map[v1.PersistentVolumeAccessMode]csi.VolumeCapability_AccessMode_Mode{
			v1.ReadWriteOnce:    csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			v1.ReadOnlyMany:     csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
			v1.ReadWriteMany:    csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
			v1.ReadWriteOncePod: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		}[m]
		caps = append(caps, &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: class.MountOptions}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		})
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := p.ctrl.CreateVolume(cctx, &csi.CreateVolumeRequest{
		Name: pvName, Parameters: params, Secrets: secrets, VolumeCapabilities: caps,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size.Value()},
	})
	if err != nil {
		log.Printf("CreateVolume %s/%s: %v", pvc.Namespace, pvc.Name, err)
		p.event(ctx, pvc, v1.EventTypeWarning, "ProvisioningFailed", err.Error())
		return
	}
	capacity := size
	if resp.Volume.CapacityBytes > 0 {
		capacity = *resourceQuantity(resp.Volume.CapacityBytes)
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: map[string]string{provisionedBy: p.driver}},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: capacity},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: class.ReclaimPolicy,
			StorageClassName:              *pvc.Spec.StorageClassName,
			MountOptions:                  class.MountOptions,
			ClaimRef: &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
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
	if _, err := p.kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		log.Printf("create PV %s: %v", pvName, err)
		return
	}
	log.Printf("provisioned %s for %s/%s (volume %s)", pvName, pvc.Namespace, pvc.Name, resp.Volume.VolumeId)
	p.event(ctx, pvc, v1.EventTypeNormal, "ProvisioningSucceeded", "Successfully provisioned volume "+pvName)
}

func (p *provisioner) delete(ctx context.Context, pv *v1.PersistentVolume) {
	if pv.Annotations[provisionedBy] != p.driver || pv.Status.Phase != v1.VolumeReleased ||
		pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete || pv.Spec.CSI == nil {
		return
	}
	secrets, err := p.secret(ctx, pv.Annotations[deleteSecretNS], pv.Annotations[deleteSecretKey])
	if err != nil {
		log.Printf("deletion secret of %s: %v", pv.Name, err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if _, err := p.ctrl.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, Secrets: secrets}); err != nil {
		log.Printf("DeleteVolume %s: %v", pv.Name, err)
		return
	}
	if err := p.kube.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		log.Printf("delete PV %s: %v", pv.Name, err)
		return
	}
	log.Printf("deleted %s (volume %s)", pv.Name, pv.Spec.CSI.VolumeHandle)
}

// StorageClassInfo is what provisioning needs from a StorageClass of this driver.
type StorageClassInfo struct {
	Parameters    map[string]string
	MountOptions  []string
	ReclaimPolicy v1.PersistentVolumeReclaimPolicy
}

func (p *provisioner) once(ctx context.Context) error {
	classes, err := p.kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	mine := map[string]*StorageClassInfo{}
	for _, c := range classes.Items {
		if c.Provisioner != p.driver {
			continue
		}
		policy := v1.PersistentVolumeReclaimDelete
		if c.ReclaimPolicy != nil {
			policy = *c.ReclaimPolicy
		}
		mine[c.Name] = &StorageClassInfo{Parameters: c.Parameters, MountOptions: c.MountOptions, ReclaimPolicy: policy}
	}
	pvcs, err := p.kube.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		p.provision(ctx, &pvcs.Items[i], mine)
	}
	pvs, err := p.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvs.Items {
		p.delete(ctx, &pvs.Items[i])
	}
	return nil
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
	for {
		if err := p.once(context.Background()); err != nil {
			log.Printf("sync: %v", err)
		}
		time.Sleep(time.Second)
	}
}
