// kiln's check of an http named context (tests/it/contexts.rs): the state BuildKit's
// dockerfile frontend 1.24 makes of `--build-context web=URL` (frontend/dockerui/namedcontext.go:
// llb.HTTP(url, llb.Filename("context"))), mounted in a RUN on the oracle's busybox base that
// lists it and stats its file; the answers are written to /out.
// Usage: go run ./examples/kiln-httpctx URL | buildctl build --oci-layout base=DIR
//   --output type=local,dest=OUT
// Built inside BuildKit v0.24.0's source tree (its vendored modules), as
// examples/kiln-httpctx/main.go: go build -mod=vendor ./examples/kiln-httpctx. Not part of kiln's build.
package main

import (
	"context"
	"os"

	"github.com/moby/buildkit/client/llb"
)

func main() {
	base := llb.OCILayout("docker.io/library/base@sha256:424a4eb59f18aaab2f870a6a3e787c6b8bdc0c9acf88649bd9a6193632d5f3b9", llb.OCIStore("", "base"))
	web := llb.HTTP(os.Args[1], llb.Filename("context"))
	run := base.Run(llb.Args([]string{"/bin/sh", "-c", "mkdir /out && ls /w > /out/listing && stat -c '%a %Y %u:%g' /w/context > /out/stat"}))
	run.AddMount("/w", web, llb.Readonly)
	out := llb.Scratch().File(llb.Copy(run.Root(), "/out/", "/", &llb.CopyInfo{CopyDirContentsOnly: true}))
	def, err := out.Marshal(context.Background(), llb.LinuxAmd64)
	if err != nil {
		panic(err)
	}
	if err := llb.WriteTo(def, os.Stdout); err != nil {
		panic(err)
	}
}
