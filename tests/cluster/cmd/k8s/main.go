// Command k8s is Berth's test control plane in one binary, in the manner of the
// old hyperkube: `k8s etcd|kube-apiserver|kube-scheduler|kube-controller-manager|kubelet|kube-proxy|kubectl ARGS...`,
// or, busybox-style, run through a link named after the component (bin/kubectl -> k8s).
//
// One binary instead of five keeps the cold build to one link of the shared
// Kubernetes packages, which is what dominates build time on small machines.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones, as the upstream commands do

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's auth plugins
)

// commands maps each subcommand to a function that runs it with os.Args shifted
// so that the component sees its own name as argv[0].
var commands = map[string]func() int{
	"etcd": func() int {
		etcdmain.Main(os.Args) // exits by itself on error
		return 0
	},
	"kube-apiserver":          func() int { return runCobra(apiserver.NewAPIServerCommand()) },
	"kube-scheduler":          func() int { return runCobra(scheduler.NewSchedulerCommand()) },
	"kube-controller-manager": func() int { return runCobra(controllermanager.NewControllerManagerCommand()) },
	// The real node: a kubelet with containerd, and kube-proxy for Service routing.
	"kubelet":    func() int { return runCobra(kubelet.NewKubeletCommand(context.Background())) },
	"kube-proxy": func() int { return runCobra(proxy.NewProxyCommand()) },
	"kubectl": func() int {
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

func runCobra(c *cobra.Command) int { return cli.Run(c) }

func main() {
	if run := commands[filepath.Base(os.Args[0])]; run != nil {
		os.Exit(run())
	}
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: %s <%v> [args...]\n", os.Args[0], names)
		os.Exit(2)
	}
	run := commands[os.Args[1]]
	os.Args = os.Args[1:]
	os.Exit(run())
}
