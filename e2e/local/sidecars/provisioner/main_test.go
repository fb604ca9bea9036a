package main

// The provisioner on the library's real controller, against client-go's fake clientset
// (an in-memory API server with watches) and a CSI controller served over gRPC: a claim
// of this driver's class becomes CreateVolume and a bound PV; releasing the PV becomes
// DeleteVolume and the PV's removal.

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

const driver = "cloudbucket.csi.io"

type fakeController struct {
	csi.UnimplementedControllerServer
	mu      sync.Mutex
	created []*csi.CreateVolumeRequest
	deleted []*csi.DeleteVolumeRequest
}

func (f *fakeController) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req)
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId: "vol-" + req.Name, VolumeContext: map[string]string{"keyPrefix": req.Name + "/"}}}, nil
}

func (f *fakeController) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, req)
	return &csi.DeleteVolumeResponse{}, nil
}

func (f *fakeController) counts() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.created), len(f.deleted)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestProvisionAndDeleteThroughTheLibrary(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	listener, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	backend := &fakeController{}
	csi.RegisterControllerServer(server, backend)
	go server.Serve(listener)
	defer server.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	deletePolicy := v1.PersistentVolumeReclaimDelete
	kube := fake.NewSimpleClientset(
		&storagev1.StorageClass{
			ObjectMeta:  metav1.ObjectMeta{Name: "buckets"},
			Provisioner: driver, ReclaimPolicy: &deletePolicy, MountOptions: []string{"allow-delete"},
			Parameters: map[string]string{
				"bucketName": "b", prefix + "provisioner-secret-name": "creds-${pvc.name}",
				prefix + "provisioner-secret-namespace":  "${pvc.namespace}",
				prefix + "node-publish-secret-name":      "creds-${pvc.name}",
				prefix + "node-publish-secret-namespace": "${pvc.namespace}",
			},
		},
		&v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds-data", Namespace: "team"},
			Data: map[string][]byte{"AWS_ACCESS_KEY_ID": []byte("k")}},
	)
	class := "buckets"
	claim := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "team", UID: "1234",
			// Set by the PV controller for claims of external provisioners.
			Annotations: map[string]string{"volume.kubernetes.io/storage-provisioner": driver}},
		Spec: v1.PersistentVolumeClaimSpec{
			StorageClassName: &class, AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteMany},
			Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{
				v1.ResourceStorage: resource.MustParse("1Gi")}},
		},
		Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimPending},
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims("team").Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := &provisioner{kube: kube, ctrl: csi.NewControllerClient(conn), driver: driver,
		timeout: 10 * time.Second, extraMetadata: true}
	go newController(ctx, p, time.Second).Run(ctx)

	var pv *v1.PersistentVolume
	eventually(t, "the PV", func() bool {
		list, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) != 1 {
			return false
		}
		pv = &list.Items[0]
		return true
	})
	if pv.Name != "pvc-1234" || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != "data" ||
		pv.Spec.ClaimRef.Namespace != "team" || pv.Spec.StorageClassName != "buckets" {
		t.Fatalf("PV not bound to the claim: %+v", pv)
	}
	if pv.Annotations["pv.kubernetes.io/provisioned-by"] != driver {
		t.Fatalf("provisioned-by: %v", pv.Annotations)
	}
	if pv.Spec.CSI.VolumeHandle != "vol-pvc-1234" || pv.Spec.CSI.VolumeAttributes["keyPrefix"] != "pvc-1234/" {
		t.Fatalf("CSI source: %+v", pv.Spec.CSI)
	}
	if ref := pv.Spec.CSI.NodePublishSecretRef; ref == nil || ref.Name != "creds-data" || ref.Namespace != "team" {
		t.Fatalf("node publish secret: %+v", ref)
	}
	if pv.Spec.MountOptions[0] != "allow-delete" || pv.Spec.PersistentVolumeReclaimPolicy != deletePolicy {
		t.Fatalf("class not applied: %+v", pv.Spec)
	}
	backend.mu.Lock()
	req := backend.created[0]
	backend.mu.Unlock()
	if req.Parameters["bucketName"] != "b" || req.Parameters[prefix+"pvc/name"] != "data" ||
		req.Parameters[prefix+"provisioner-secret-name"] != "" || req.Secrets["AWS_ACCESS_KEY_ID"] != "k" {
		t.Fatalf("CreateVolume request: %+v", req)
	}
	if mode := req.VolumeCapabilities[0].GetAccessMode().GetMode(); mode != csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER {
		t.Fatalf("access mode %v", mode)
	}

	// The claim is deleted: the PV controller marks the PV Released; the library deletes.
	pv.Status.Phase = v1.VolumeReleased
	if _, err := kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "DeleteVolume and the PV's removal", func() bool {
		_, deleted := backend.counts()
		list, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		return err == nil && deleted == 1 && len(list.Items) == 0
	})
	backend.mu.Lock()
	del := backend.deleted[0]
	backend.mu.Unlock()
	if del.VolumeId != "vol-pvc-1234" || del.Secrets["AWS_ACCESS_KEY_ID"] != "k" {
		t.Fatalf("DeleteVolume request: %+v", del)
	}
	if created, _ := backend.counts(); created != 1 {
		t.Fatalf("CreateVolume called %d times", created)
	}
}
