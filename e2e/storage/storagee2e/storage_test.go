// Package storagee2e is the Kubernetes storage e2e runner for cloudbucket-csi: the
// test/e2e/storage/external suites only (-storage.testdriver=FILE), without the rest of
// e2e.test, whose other packages need modules (k8s.io/sample-apiserver) that the Go module
// proxy reachable here refuses. Flags and start-up mirror test/e2e/e2e_test.go.
package storagee2e

import (
	"flag"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"
	"k8s.io/kubernetes/test/e2e/framework/testfiles"
	_ "k8s.io/kubernetes/test/e2e/storage/external"
)

func TestMain(m *testing.M) {
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	framework.AfterReadingAllFlags(&framework.TestContext)
	// The StorageClass file named by the test driver YAML is read relative to -repo-root.
	testfiles.AddFileSource(testfiles.RootFileSource{Root: framework.TestContext.RepoRoot})
	os.Exit(m.Run())
}

func TestStorageE2E(t *testing.T) {
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "cloudbucket-csi storage e2e", suiteConfig, reporterConfig)
}
