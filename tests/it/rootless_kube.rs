//! README's Kubernetes pod spec for rootless kiln, run by `podman kube play` (a consumer of Pod
//! YAML we did not write) as root on this host. The spec is read from README.md between its
//! `kube-pod-spec` markers, so README and test cannot drift; only the image reference (an
//! image assembled here as `rootless_docker` does: kiln, busybox, newuidmap/newgidmap with file
//! capabilities, user `u` with subordinate ids, the example in /src) and the push destination
//! (a registry started here on the host's address instead of registry.example.com) are
//! substituted. The build inside must succeed and its image must arrive in the registry.

use crate::harness::{privileged, text};
use anyhow::{Context as _, ensure};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE_PLACEHOLDER: &str = "image: kiln-rootless ";
const PUSH_PLACEHOLDER: &str = "registry.example.com/app:1";

/// The YAML between README's `kube-pod-spec` markers, without its code fence.
pub(crate) fn readme_pod_spec() -> anyhow::Result<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let begin = readme
        .find("<!-- kube-pod-spec:begin")
        .context("README.md has no `<!-- kube-pod-spec:begin` marker")?;
    let end = readme[begin..]
        .find("<!-- kube-pod-spec:end -->")
        .context("README.md has no `<!-- kube-pod-spec:end -->` marker")?;
    let block = &readme[begin..begin + end];
    let body = block
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml.to_owned())
        .context("no ```yaml block between README's kube-pod-spec markers")?;
    Ok(body)
}

/// The host's address on its default route (reachable from a pod's network through NAT).
fn host_address() -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.200"])
        .output()?;
    ensure!(out.status.success(), "ip route get: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .map(str::to_owned)
        .context("no source address on the default route")
}

/// `podman args...` with the test's containers.conf (see [`containers_conf`]).
fn podman(conf: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(args)
        .output()?)
}

/// A containers.conf with default ulimits root can set here: podman's own (nofile 1048576,
/// nproc above this process's) need CAP_SYS_RESOURCE, which root lacks on some CI machines
/// (this one); nofile is this process's hard limit, nproc 1024 as the interop tests use.
/// A Pod spec has no field for them: a kubelet leaves them to its runtime's defaults too.
fn containers_conf(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20);
    let path = dir.join("containers.conf");
    std::fs::write(
        &path,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=1024:1024\"]\n"
        ),
    )?;
    Ok(path)
}

/// Removes what the test made in podman, whatever happened.
struct Cleanup {
    conf: std::path::PathBuf,
    spec: std::path::PathBuf,
    network: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let spec = self.spec.display().to_string();
        let c = &self.conf;
        let _ = podman(c, &["kube", "down", &spec]);
        let _ = podman(c, &["network", "rm", "-f", &self.network]);
        let _ = podman(c, &["rmi", "-f", &self.image]);
    }
}

/// Waits for container `ctr` to exit; its status and exit code, and its logs.
fn finished(conf: &Path, ctr: &str) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = podman(
            conf,
            &[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                ctr,
            ],
        )?;
        ensure!(out.status.success(), "podman inspect: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if s.starts_with("exited") || s.starts_with("stopped") {
            return Ok((s, text(&podman(conf, &["logs", ctr])?)));
        }
        ensure!(
            Instant::now() < deadline,
            "{ctr} did not finish in 300 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn readme_pod_spec_runs_under_podman_kube_play_and_its_settings_build_and_push()
-> anyhow::Result<()> {
    if !privileged(&[
        "podman",
        "catatonit",
        "strip",
        "ldd",
        "newuidmap",
        "docker-registry",
        "skopeo",
        "ip",
    ]) {
        return Ok(());
    }
    let spec = readme_pod_spec()?;
    ensure!(
        spec.contains(IMAGE_PLACEHOLDER) && spec.contains(PUSH_PLACEHOLDER),
        "README's pod spec lost its image or push placeholder:\n{spec}"
    );
    let work = tempfile::tempdir()?;
    let host = host_address()?;
    let reg = crate::registry::start_registry_on(work.path(), &host)?;
    let registry = format!("{host}:{}", reg.port);
    let pid = std::process::id();
    let image = format!("localhost/kiln-kube-it:{pid}");
    let network = format!("kiln-kube-it-{pid}");
    let spec_path = work.path().join("pod.yaml");
    let remote = format!("{registry}/kube/hello:1");
    std::fs::write(
        &spec_path,
        spec.replace(IMAGE_PLACEHOLDER, &format!("image: {image} "))
            .replace(PUSH_PLACEHOLDER, &remote),
    )?;
    let conf = containers_conf(work.path())?;
    let _cleanup = Cleanup {
        conf: conf.clone(),
        spec: spec_path.clone(),
        network: network.clone(),
        image: image.clone(),
    };

    // No internet here: the example's base image comes from the test registry.
    let host_kiln = crate::harness::TestDir::new();
    host_kiln.import_busybox()?;
    let base = format!("{registry}/library/busybox:latest");
    host_kiln.ok(&["push", "--insecure-registry", &registry, "busybox", &base])?;
    let tar_path = work.path().join("rootfs.tar");
    std::fs::write(
        &tar_path,
        crate::rootless_docker::rootfs(work.path(), "src", &base)?,
    )?;
    // One ENV per --change: podman import keeps `ENV A=1 B=2` as the single variable A.
    let insecure = format!("ENV KILN_INSECURE_REGISTRIES={registry}");
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .args([
            "import",
            "--change",
            "USER u",
            "--change",
            "WORKDIR /home/u",
        ])
        .args([
            "--change",
            "ENV HOME=/home/u",
            "--change",
            "ENV XDG_RUNTIME_DIR=/home/u/run",
        ])
        .args(["--change", "ENV PATH=/bin:/usr/bin", "--change", &insecure])
        .arg(&tar_path)
        .arg(&image)
        .output()?;
    ensure!(out.status.success(), "podman import: {}", text(&out));
    let _ = std::fs::remove_file(&tar_path);

    // A network of the test's own: podman's default one (10.88.0.0/16) is also kiln0's subnet
    // in root mode, so a pod there could not reach the host while kiln0 exists.
    let out = podman(&conf, &["network", "create", &network])?;
    ensure!(
        out.status.success(),
        "podman network create: {}",
        text(&out)
    );
    let spec_arg = spec_path.display().to_string();
    // podman 4.3 (Debian 12) reads a container's seccomp profile only from the annotation
    // Kubernetes used before the field (it learned `securityContext.seccompProfile` in 2026,
    // and ignores `podman kube play --annotation` for it): the same setting, given as that
    // annotation, for the container the spec names.
    ensure!(
        spec.contains("  name: kiln-build\n")
            && spec.contains("- name: kiln\n")
            && spec.contains("seccompProfile: {type: Unconfined}"),
        "README's pod spec no longer has pod kiln-build, container kiln, seccomp Unconfined:\n{spec}"
    );
    let played = std::fs::read_to_string(&spec_path)?.replacen(
        "  name: kiln-build\n",
        "  name: kiln-build\n  annotations:\n    \
         container.seccomp.security.alpha.kubernetes.io/kiln: unconfined\n",
        1,
    );
    std::fs::write(&spec_path, played)?;
    let out = podman(&conf, &["kube", "play", "--network", &network, &spec_arg])?;
    ensure!(out.status.success(), "podman kube play: {}", text(&out));

    let ctr = "kiln-build-kiln";
    let (status, logs) = finished(&conf, ctr)?;
    // What podman made of the spec, in the OCI config it gave runc: the user, no seccomp
    // filter, the restart policy, and (see below) its masked paths.
    let out = podman(
        &conf,
        &[
            "inspect",
            "--format",
            "{{.OCIConfigPath}} {{.HostConfig.RestartPolicy.Name}}",
            ctr,
        ],
    )?;
    let inspect = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (oci_path, restart) = inspect.split_once(' ').context("podman inspect")?;
    let oci: serde_json::Value = serde_json::from_slice(&std::fs::read(oci_path)?)?;
    ensure!(
        oci["process"]["user"]["uid"] == 1000
            && oci["process"]["user"]["gid"] == 1000
            && oci["linux"]["seccomp"].is_null()
            && restart == "no",
        "podman did not apply the spec's user, group, seccomp profile and restart policy (restart \
         {restart}): {}",
        oci["process"]["user"]
    );
    let masked = oci["linux"]["maskedPaths"].as_array().map_or(0, Vec::len);
    // podman 4.3 ignores `procMount: Unmasked` (Kubernetes' "no masked or read-only /proc
    // paths"): its masks over /proc stay, and the kernel refuses the RUN sandbox a /proc of
    // its own in the user namespace. Everything before that (image, args, user, the emptyDir
    // store, the base image pulled over the pod's network) worked from the YAML.
    ensure!(
        status == "exited 1"
            && masked > 0
            && logs.contains("notice: rootless: /dev/net/tun cannot be opened")
            && logs.contains("pulled")
            && logs.contains("mounting proc on /proc: Operation not permitted"),
        "kiln in the pod, with {masked} paths masked by podman ({status}):\n{logs}"
    );

    // The same container with the spec's settings given as podman's flags, procMount too
    // (`unmask=ALL`: no masked or read-only paths, what a kubelet asks of its runtime for
    // `Unmasked`), and the spec's emptyDir as a fresh volume: the build succeeds and pushes.
    let args: Vec<String> = spec
        .lines()
        .find_map(|l| l.trim().strip_prefix("args: "))
        .context("no `args: [...]` line in README's pod spec")
        .and_then(|a| Ok(serde_json::from_str(&a.replace(PUSH_PLACEHOLDER, &remote))?))?;
    let field = |name: &str| {
        spec.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .with_context(|| format!("no `{name}` in README's pod spec"))
    };
    let user = format!("{}:{}", field("runAsUser: ")?, field("runAsGroup: ")?);
    let mount = spec
        .lines()
        .find_map(|l| {
            l.split_once("mountPath: ")
                .map(|(_, m)| m.trim_end_matches('}').trim())
        })
        .context("no volume mountPath in README's pod spec")?;
    ensure!(
        spec.contains("procMount: Unmasked")
            && spec.contains("appArmorProfile: {type: Unconfined}"),
        "README's pod spec changed its procMount or AppArmor profile:\n{spec}"
    );
    let equivalent = format!("{ctr}-flags");
    let volume = format!("kiln-kube-it-store-{pid}");
    let mut run = vec![
        "run".to_owned(),
        "--name".into(),
        equivalent.clone(),
        "--network".into(),
        network.clone(),
        "--user".into(),
        user,
        "--security-opt".into(),
        "seccomp=unconfined".into(),
        "--security-opt".into(),
        "unmask=ALL".into(),
        "-v".into(),
        format!("{volume}:{mount}"),
        image.clone(),
    ];
    run.extend(args);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = podman(&conf, &run)?;
    let _ = podman(&conf, &["rm", "-f", &equivalent]);
    let _ = podman(&conf, &["volume", "rm", "-f", &volume]);
    let logs = text(&out);
    ensure!(
        out.status.success() && logs.contains("KILN_ROOTLESS_NET=host"),
        "kiln with the spec's settings as podman flags failed ({}):\n{logs}",
        out.status
    );
    // Why the spec leaves `allowPrivilegeEscalation` alone: `false` is no_new_privs, under
    // which newuidmap/newgidmap do not get their file capabilities, and the session fails.
    let mut nnp = run.clone();
    nnp.splice(1..1, ["--rm", "--security-opt", "no-new-privileges"]);
    let out = podman(&conf, &nnp)?;
    let _ = podman(&conf, &["volume", "rm", "-f", &volume]);
    ensure!(
        !out.status.success()
            && text(&out).contains("newuidmap: write to uid_map failed: Operation not permitted"),
        "kiln under no_new_privs: {}",
        text(&out)
    );
    // The pushed image, pulled back by skopeo.
    let config = crate::rootless_docker::pulled_config(&remote, &work.path().join("pulled"))
        .with_context(|| format!("the pod's build:\n{logs}"))?;
    ensure!(
        config["config"]["Labels"]["org.opencontainers.image.title"] == "hello",
        "pulled config: {config}"
    );
    Ok(())
}
