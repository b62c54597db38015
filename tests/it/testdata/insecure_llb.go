// kiln's probe of an insecure RUN step (tests/it/run_options.rs): one RUN with
// llb.SecurityModeInsecure on the oracle's busybox base, its files written to /out.
// Usage: go run ./examples/kiln-insecure SCRIPT [USER] | buildctl build --oci-layout base=DIR
//   --allow security.insecure --output type=local,dest=OUT
// Built inside BuildKit v0.24.0's source tree (its vendored modules), as
// examples/kiln-insecure/main.go: go build -mod=vendor ./examples/kiln-insecure. Not part of kiln's build.
package main

import (
	"context"
	"os"

	"github.com/moby/buildkit/client/llb"
)

func main() {
	base := llb.OCILayout("docker.io/library/base@sha256:424a4eb59f18aaab2f870a6a3e787c6b8bdc0c9acf88649bd9a6193632d5f3b9", llb.OCIStore("", "base"))
	opts := []llb.RunOption{llb.Args([]string{"/bin/sh", "-c", "cd /out && " + os.Args[1]}), llb.Security(llb.SecurityModeInsecure)}
	if len(os.Args) > 2 {
		// The user to run as (`USER` of the step); /out is made writable for it first.
		base = base.Run(llb.Shlex("sh -c 'mkdir -m 777 /out'")).Root()
		opts = append(opts, llb.User(os.Args[2]))
	} else {
		base = base.Run(llb.Shlex("mkdir /out")).Root()
	}
	run := base.Run(opts...)
	out := llb.Scratch().File(llb.Copy(run.Root(), "/out/", "/", &llb.CopyInfo{CopyDirContentsOnly: true}))
	def, err := out.Marshal(context.Background(), llb.LinuxAmd64)
	if err != nil {
		panic(err)
	}
	if err := llb.WriteTo(def, os.Stdout); err != nil {
		panic(err)
	}
}
