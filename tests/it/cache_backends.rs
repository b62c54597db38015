//! Object store cache backends (`type=s3`, `type=azblob`) against real servers started here on
//! free 127.0.0.1 ports: moto's S3 server (PyPI `moto[server]`, binary `moto_server`) with IAM
//! authentication on, so that it verifies every SigV4 signature (with botocore's signer), and
//! Microsoft's Azure Storage emulator azurite (npm `azurite`, binary `azurite-blob`, run with
//! telemetry off), which verifies SharedKey and SAS signatures. Each server writes an access
//! log, which the tests read to count requests. Then the fleet test: four runners at once
//! against one cache on every backend.

use crate::harness::{
    Built, KillOnDrop, TestDir, build_app, cache_project, executed_runs, free_port, parse_built,
    privileged, text, three_stage_dockerfile, wait_for_port,
};
use anyhow::{Context as _, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// [`three_stage_dockerfile`] whose final stage also uses a cache mount.
const DOCKERFILE: &str = three_stage_dockerfile!(
    "RUN --mount=type=cache,id=pkgs,target=/var/cache/pkgs \
    ( [ -f /var/cache/pkgs/tool ] || echo fetched > /var/cache/pkgs/tool ) && \
    cat /app/out /deps.txt /var/cache/pkgs/tool > /app/final"
);

/// The azurite emulator's documented development account and key.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A server child whose access log goes to a file, killed on drop.
pub(crate) struct Server {
    _child: KillOnDrop,
    port: u16,
    log: PathBuf,
    kind: Kind,
    /// S3: the IAM user's key and temporary (assumed role) credentials.
    creds: Option<AwsCreds>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// moto with IAM authentication on (see [`moto_iam`]).
    S3,
    Azblob,
}

/// moto's server (what `moto_server` runs) with one fix to its signature check. moto
/// verifies a request against the path as werkzeug hands it over, percent-decoded, where S3
/// signs the path as sent, encoded once: so every key with a `:` (every blob key of
/// BuildKit's layout: `sha256:<hex>`) fails with SignatureDoesNotMatch under IAM auth, for
/// boto3 as for kiln. The fix encodes the path again (as botocore and S3 do) before moto's
/// check, which is otherwise unchanged: botocore's SigV4 over the request moto received.
const MOTO_SERVER: &str = r#"
import sys, urllib.parse
import moto.iam.access_control as ac
check = ac.IAMRequestBase.__init__
def encoded(self, account_id, method, path, *rest, **kw):
    p, q, query = path.partition("?")
    check(self, account_id, method, urllib.parse.quote(p, safe="/~") + q + query, *rest, **kw)
ac.IAMRequestBase.__init__ = encoded
from moto.server import main
main(sys.argv[1:])
"#;

/// Credentials moto's IAM made for the tests.
struct AwsCreds {
    access_key_id: String,
    secret_access_key: String,
    /// From STS AssumeRole: `ASIA...`, its secret and session token.
    temporary: (String, String, String),
}

/// Sets up moto on `port` with boto3 (which comes with moto): an IAM user `kiln` allowed
/// `s3:*` and its access key, a role it may assume, the bucket; then switches IAM
/// authentication on (moto's `/moto-api/reset-auth` with 0 unauthenticated requests left, the
/// runtime form of `INITIAL_NO_AUTH_ACTION_COUNT=0`), from when on moto recomputes the SigV4
/// signature of every request and refuses a wrong one (`SignatureDoesNotMatch`), an unknown
/// key (`InvalidAccessKeyId`) and a wrong session token. Last, it assumes the role (a signed
/// STS call) for temporary credentials.
fn moto_iam(port: u16) -> anyhow::Result<AwsCreds> {
    let script = r#"
import boto3, json, sys, urllib.request
ep = "http://127.0.0.1:" + sys.argv[1]
kw = dict(endpoint_url=ep, region_name="us-east-1")
setup = dict(kw, aws_access_key_id="setup", aws_secret_access_key="setup")
allow = lambda action, extra={}: json.dumps({"Version": "2012-10-17", "Statement": [dict({"Effect": "Allow", "Action": action, "Resource": "*"}, **extra)]})
iam = boto3.client("iam", **setup)
iam.create_user(UserName="kiln")
iam.put_user_policy(UserName="kiln", PolicyName="cache", PolicyDocument=allow(["s3:*", "sts:AssumeRole"]))
key = iam.create_access_key(UserName="kiln")["AccessKey"]
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
iam.create_role(RoleName="ci", AssumeRolePolicyDocument=trust)
iam.put_role_policy(RoleName="ci", PolicyName="cache", PolicyDocument=allow("s3:*"))
boto3.client("s3", **setup).create_bucket(Bucket=sys.argv[2])
req = urllib.request.Request(ep + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"})
urllib.request.urlopen(req).read()
sts = boto3.client("sts", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], **kw)
tmp = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/ci", RoleSessionName="kiln")["Credentials"]
print(key["AccessKeyId"], key["SecretAccessKey"], tmp["AccessKeyId"], tmp["SecretAccessKey"], tmp["SessionToken"])
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), BUCKET])
        .output()?;
    ensure!(
        out.status.success(),
        "setting up moto's IAM: {}",
        text(&out)
    );
    let words: Vec<String> = String::from_utf8(out.stdout)?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let [id, secret, tid, tsecret, token] = <[String; 5]>::try_from(words)
        .map_err(|w| anyhow::anyhow!("moto's IAM setup printed {w:?}"))?;
    ensure!(
        id.starts_with("AKIA") && tid.starts_with("ASIA"),
        "{id} {tid}"
    );
    Ok(AwsCreds {
        access_key_id: id,
        secret_access_key: secret,
        temporary: (tid, tsecret, token),
    })
}

const BUCKET: &str = "kiln-cache";

impl Server {
    pub(crate) fn tools(kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::S3 => &["moto_server", "python3"],
            Kind::Azblob => &["azurite-blob"],
        }
    }

    pub(crate) fn start(kind: Kind, dir: &Path) -> anyhow::Result<Server> {
        let port = free_port()?;
        let log = dir.join(format!("{kind:?}-access.log"));
        let out = std::fs::File::create(&log)?;
        let child = match kind {
            // moto logs each request (werkzeug's access log) on stderr.
            Kind::S3 => Command::new("python3")
                .args([
                    "-c",
                    MOTO_SERVER,
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .context("starting moto_server")?,
            // azurite logs each request on stdout unless --silent.
            Kind::Azblob => Command::new("azurite-blob")
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(dir.join("azurite"))
                .args(["--disableTelemetry", "--skipApiVersionCheck"])
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .context("starting azurite-blob")?,
        };
        let mut s = Server {
            _child: KillOnDrop(child),
            port,
            log,
            kind,
            creds: None,
        };
        wait_for_port(
            port,
            &format!("{kind:?} server"),
            Duration::from_secs(30),
            Duration::from_millis(50),
        )?;
        if kind == Kind::S3 {
            s.creds = Some(moto_iam(port)?);
        }
        Ok(s)
    }

    /// A `--cache-to`/`--cache-from` value for cache `name` (the container or bucket is
    /// `kiln-cache`), with `extra` options.
    pub(crate) fn spec(&self, name: &str, extra: &str) -> String {
        let p = self.port;
        let s = match self.kind {
            Kind::S3 => {
                let c = self.creds.as_ref().expect("moto has credentials");
                format!(
                    "{},access_key_id={},secret_access_key={},name={name}",
                    self.s3_base(),
                    c.access_key_id,
                    c.secret_access_key
                )
            }
            Kind::Azblob => format!(
                "type=azblob,account_url=http://127.0.0.1:{p}/{AZ_ACCOUNT},\
                 secret_access_key={AZ_KEY},container={BUCKET},prefix=ci,name={name}"
            ),
        };
        if extra.is_empty() {
            s
        } else {
            format!("{s},{extra}")
        }
    }

    /// The S3 options of every spec but the credentials and name.
    fn s3_base(&self) -> String {
        format!(
            "type=s3,region=us-east-1,bucket={BUCKET},endpoint_url=http://127.0.0.1:{},\
             use_path_style=true,prefix=ci/",
            self.port
        )
    }

    /// Access log lines of `method` requests whose target contains `path`, answered 2xx.
    fn requests(&self, method: &str, path: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.contains(&format!("\"{method} ")) && l.contains(path) && {
                    // `"METHOD /path HTTP/1.1" STATUS`
                    let after = l.rsplit('"').next().unwrap_or_default().trim_start();
                    after.starts_with('2')
                }
            })
            .map(str::to_owned)
            .collect()
    }

    /// Blob writes so far (single PUTs and parts).
    fn blob_puts(&self) -> usize {
        self.requests("PUT", "/blobs/").len()
    }
}

/// A test dir with busybox imported and the Dockerfile.
fn project() -> anyhow::Result<TestDir> {
    cache_project(DOCKERFILE)
}

/// The project and a server of `kind` in its temp dir, or None when the test is skipped.
fn setup(kind: Kind) -> anyhow::Result<Option<(TestDir, Server)>> {
    if !privileged(Server::tools(kind)) {
        return Ok(None);
    }
    let t = project()?;
    let s = Server::start(kind, t.dir.path())?;
    Ok(Some((t, s)))
}

fn ran_lines(b: &Built) -> Vec<String> {
    executed_runs(&b.events)
}

/// Export (mode=max, mounts) from one runner; a fresh runner (new KILN_ROOT) builds with zero
/// RUN steps and the same digest; re-export sends no blob; one changed file reruns only its
/// dependents; the cache mount travelled.
fn round_trip(kind: Kind) -> anyhow::Result<()> {
    let Some((t, srv)) = setup(kind)? else {
        return Ok(());
    };
    let to = srv.spec("main", "mode=max,mounts=true");
    let from = srv.spec("main", "");
    // The first CI run: nothing to import yet, which is a warning naming the backend.
    let first = build_app(&t, &["--cache-from", &from, "--cache-to", &to])?;
    ensure!(ran_lines(&first).len() == 4, "{}", first.stderr);
    let backend = match kind {
        Kind::S3 => format!("s3 bucket {BUCKET}"),
        Kind::Azblob => format!("azblob container {BUCKET}"),
    };
    ensure!(
        first.stderr.contains("warning: cache not imported")
            && first.stderr.contains(&backend)
            && first.stderr.contains("not found"),
        "{}",
        first.stderr
    );
    let puts = srv.blob_puts();
    ensure!(puts > 0, "no blob PUT in the access log");

    // Re-export of an unchanged build: HEADs only, no blob is written again.
    let again = build_app(&t, &["--cache-to", &to])?;
    ensure!(
        srv.blob_puts() == puts,
        "re-export wrote blobs: {:?}\n{}",
        srv.requests("PUT", "/blobs/"),
        again.stderr
    );
    ensure!(again.stderr.contains("0 uploaded"), "{}", again.stderr);

    // A fresh runner: zero RUN steps, the same image, the cache mount restored.
    let fresh = project()?;
    let manifest_gets = srv.requests("GET", "manifests/main").len();
    let second = build_app(&fresh, &["--cache-from", &from])?;
    ensure!(
        ran_lines(&second).is_empty() && second.digest == first.digest,
        "ran {:?}; {} vs {}\n{}",
        ran_lines(&second),
        second.digest,
        first.digest,
        second.stderr
    );
    ensure!(srv.requests("GET", "manifests/main").len() == manifest_gets + 1);
    let out = fresh.ok(&["run", "--rm", "app:1", "cat", "/app/final"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "a\nbuilding\ndeps\nfetched\n",
        "{}",
        text(&out)
    );

    // One changed file: only the steps after it run, and the cache mount comes from the
    // cache (the RUN finds `tool` instead of writing it).
    let changed = project()?;
    changed.write("a.txt", "changed\n");
    let third = build_app(&changed, &["--cache-from", &from])?;
    let ran = ran_lines(&third);
    ensure!(
        ran.len() == 2
            && ran.iter().any(|r| r.contains("RUN cat /a.txt"))
            && ran.iter().any(|r| r.contains("cat /app/out")),
        "ran {ran:?}\n{}",
        third.stderr
    );
    let mount = std::fs::read_dir(changed.root.join("cachemounts"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("pkgs-"))
        })
        .context("no pkgs cache mount")?;
    ensure!(std::fs::read_to_string(mount.join("tool"))? == "fetched\n");
    Ok(())
}

#[test]
fn s3_fresh_runner_hits_reexport_uploads_nothing_and_changes_rerun_dependents() -> anyhow::Result<()>
{
    round_trip(Kind::S3)
}

#[test]
fn azblob_fresh_runner_hits_reexport_uploads_nothing_and_changes_rerun_dependents()
-> anyhow::Result<()> {
    round_trip(Kind::Azblob)
}

/// mode=min carries the final image's steps only: when the final stage's first step misses,
/// its builder stage runs again from a min cache and not from a max one.
fn min_vs_max(kind: Kind) -> anyhow::Result<()> {
    let Some((t, srv)) = setup(kind)? else {
        return Ok(());
    };
    build_app(
        &t,
        &[
            "--cache-to",
            &srv.spec("min", "mode=min"),
            "--cache-to",
            &srv.spec("max", "mode=max"),
        ],
    )?;
    for (name, want) in [("min", 4), ("max", 1)] {
        let fresh = project()?;
        fresh.write("b.txt", "changed\n");
        let b = build_app(&fresh, &["--cache-from", &srv.spec(name, "")])?;
        let ran = ran_lines(&b);
        ensure!(ran.len() == want, "{name}: ran {ran:?}\n{}", b.stderr);
    }
    if kind == Kind::S3 {
        // touch_refresh=0s: every blob already there is older than that, so a re-export
        // copies each onto itself (CopyObject) instead of uploading it; the cache still works.
        let before = srv.requests("PUT", "/blobs/").len();
        let r = build_app(
            &t,
            &["--cache-to", &srv.spec("max", "mode=max,touch_refresh=0s")],
        )?;
        ensure!(r.stderr.contains("0 uploaded"), "{}", r.stderr);
        let touched = srv.requests("PUT", "/blobs/").len() - before;
        let blobs: usize = r
            .stderr
            .lines()
            .find_map(|l| {
                l.split(" records, ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .context("no blob count")?;
        ensure!(
            touched == blobs,
            "{touched} touched of {blobs}\n{}",
            r.stderr
        );
        let fresh = project()?;
        let b = build_app(&fresh, &["--cache-from", &srv.spec("max", "")])?;
        ensure!(ran_lines(&b).is_empty(), "{}", b.stderr);
    }
    Ok(())
}

#[test]
fn s3_min_exports_final_steps_max_every_stage() -> anyhow::Result<()> {
    min_vs_max(Kind::S3)
}

#[test]
fn azblob_min_exports_final_steps_max_every_stage() -> anyhow::Result<()> {
    min_vs_max(Kind::Azblob)
}

/// Wrong credentials fail the export with the backend and bucket/container named;
/// `ignore-error=true` makes an unreachable backend a warning.
fn errors(kind: Kind) -> anyhow::Result<()> {
    let Some((t, srv)) = setup(kind)? else {
        return Ok(());
    };
    // The right credentials work: the server checked kiln's signatures.
    build_app(&t, &["--cache-to", &srv.spec("main", "")])?;
    let fresh = project()?;
    let b = build_app(&fresh, &["--cache-from", &srv.spec("main", "")])?;
    ensure!(ran_lines(&b).is_empty(), "{}", b.stderr);
    // The right key id with a wrong secret: only a server that recomputes the signature
    // notices.
    let bad = match kind {
        Kind::S3 => {
            let secret = &srv.creds.as_ref().expect("moto").secret_access_key;
            srv.spec("main", "").replace(
                &format!("secret_access_key={secret}"),
                "secret_access_key=wrong",
            )
        }
        Kind::Azblob => srv.spec("main", "").replace(AZ_KEY, "d3Jvbmcta2V5"),
    };
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t.kiln(&["build", "-t", "app:1", "--cache-to", &bad, ctx]);
    let err = text(&out);
    let (backend, code) = match kind {
        Kind::S3 => (
            format!("s3 bucket {BUCKET}"),
            "HTTP 403 SignatureDoesNotMatch",
        ),
        Kind::Azblob => (
            format!("azblob container {BUCKET}"),
            "HTTP 403 AuthorizationFailure",
        ),
    };
    ensure!(
        !out.status.success() && err.contains(&backend) && err.contains(code),
        "{err}"
    );

    // Nothing listens on this port: with ignore-error the build succeeds with a warning.
    let dead = free_port()?;
    let unreachable = srv
        .spec("main", "ignore-error=true")
        .replace(&format!(":{}", srv.port), &format!(":{dead}"));
    let out = t.kiln(&["build", "-t", "app:1", "--cache-to", &unreachable, ctx]);
    let err = text(&out);
    ensure!(
        out.status.success()
            && err.contains("warning: exporting cache to")
            && err.contains("ignore-error=true"),
        "{err}"
    );
    let strict = unreachable.replace(",ignore-error=true", "");
    let out = t.kiln(&["build", "-t", "app:1", "--cache-to", &strict, ctx]);
    ensure!(!out.status.success(), "{}", text(&out));
    Ok(())
}

#[test]
fn s3_wrong_credentials_name_the_bucket_and_ignore_error_warns() -> anyhow::Result<()> {
    errors(Kind::S3)
}

#[test]
fn azblob_wrong_credentials_name_the_container_and_ignore_error_warns() -> anyhow::Result<()> {
    errors(Kind::Azblob)
}

/// A layer larger than the part size goes up in parts (S3 multipart, Azure blocks) and comes
/// back whole.
fn large_layer(kind: Kind) -> anyhow::Result<()> {
    let Some((t, srv)) = setup(kind)? else {
        return Ok(());
    };
    // moto refuses parts under 5 MiB (as S3 does) except the last.
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN head -c 12582912 /dev/urandom > /big && sha256sum /big > /big.sum\n",
    );
    let to = srv.spec("big", "");
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t
        .cmd(&[
            "build",
            "--progress",
            "rawjson",
            "-t",
            "app:1",
            "--cache-to",
            &to,
            ctx,
        ])
        .env("KILN_OBJECT_PART_SIZE", "5M")
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let first = parse_built(&out)?;
    let parts = match kind {
        Kind::S3 => srv.requests("PUT", "partNumber=").len(),
        Kind::Azblob => srv.requests("PUT", "comp=block").len(),
    };
    ensure!(parts >= 2, "no parts uploaded:\n{}", first.stderr);
    let fresh = project()?;
    fresh.write(
        "Dockerfile",
        &std::fs::read_to_string(t.ctx.join("Dockerfile"))?,
    );
    let second = build_app(&fresh, &["--cache-from", &srv.spec("big", "")])?;
    ensure!(ran_lines(&second).is_empty() && second.digest == first.digest);
    let out = fresh.ok(&["run", "--rm", "app:1", "sha256sum", "-c", "/big.sum"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn s3_large_layer_goes_up_in_multipart_parts() -> anyhow::Result<()> {
    large_layer(Kind::S3)
}

#[test]
fn azblob_large_layer_goes_up_in_blocks() -> anyhow::Result<()> {
    large_layer(Kind::Azblob)
}

/// Where the fleet shares its cache.
enum Shared {
    Registry(crate::remote_cache::Registry),
    Local(PathBuf),
    Object(Server),
}

impl Shared {
    fn to(&self) -> String {
        match self {
            Shared::Registry(r) => format!(
                "type=registry,ref={},mode=max",
                r.reference("fleet/cache:main")
            ),
            Shared::Local(d) => format!("type=local,dest={},mode=max", d.display()),
            Shared::Object(s) => s.spec("fleet", "mode=max"),
        }
    }

    fn from(&self) -> String {
        match self {
            Shared::Registry(r) => format!("type=registry,ref={}", r.reference("fleet/cache:main")),
            Shared::Local(d) => format!("type=local,src={}", d.display()),
            Shared::Object(s) => s.spec("fleet", ""),
        }
    }
}

/// Variant `i` of the fleet's Dockerfile: shared stages, then one step of its own.
fn fleet_dockerfile(i: usize) -> String {
    format!(
        "FROM busybox AS deps\nRUN echo deps > /deps.txt\n\n\
         FROM busybox\nCOPY --from=deps /deps.txt /deps.txt\nCOPY a.txt /a.txt\n\
         RUN cat /deps.txt /a.txt > /shared\nRUN echo variant-{i} > /variant\n"
    )
}

fn fleet_runner(i: usize) -> anyhow::Result<TestDir> {
    let t = TestDir::new();
    t.import_busybox()?;
    t.write("Dockerfile", &fleet_dockerfile(i));
    t.write("a.txt", "a\n");
    Ok(t)
}

const FLEET: usize = 4;

/// Four runners (separate KILN_ROOTs) build overlapping Dockerfiles at once against one cache
/// reference on every backend: all succeed with the images of a serial build; the cache left
/// behind is whole (the last export wins, and it is one runner's complete manifest); a later
/// fresh runner gets full hits on the winner's Dockerfile and hits every shared step of the
/// others.
#[test]
fn fleet_of_four_concurrent_runners_shares_one_cache_on_every_backend() -> anyhow::Result<()> {
    if !privileged(&["docker-registry", "moto_server", "azurite-blob"]) {
        return Ok(());
    }
    // A serial build of each variant, and what its image holds. (RUN layers keep their
    // files' mtimes, so independent builds differ in digest: images are compared by content,
    // and by digest only where one came from the other's cache.)
    let serial: Vec<String> = (0..FLEET)
        .map(|i| {
            let t = fleet_runner(i)?;
            build_app(&t, &[])?;
            image_content(&t)
        })
        .collect::<anyhow::Result<_>>()?;
    let world = TestDir::new();
    let backends = [
        Shared::Registry(crate::remote_cache::Registry::start(world.dir.path())?),
        Shared::Local(world.dir.path().join("layout")),
        Shared::Object(Server::start(Kind::S3, world.dir.path())?),
        Shared::Object(Server::start(Kind::Azblob, world.dir.path())?),
    ];
    for shared in &backends {
        let (to, from) = (shared.to(), shared.from());
        let runners: Vec<TestDir> = (0..FLEET)
            .map(fleet_runner)
            .collect::<anyhow::Result<_>>()?;
        let children = runners
            .iter()
            .map(|t| {
                let ctx = t.ctx.to_str().expect("utf-8 path");
                t.cmd(&[
                    "build",
                    "--progress",
                    "rawjson",
                    "-t",
                    "app:1",
                    "--cache-from",
                    &from,
                    "--cache-to",
                    &to,
                    ctx,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut digests = Vec::new();
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output()?;
            ensure!(out.status.success(), "{to}: runner {i}:\n{}", text(&out));
            digests.push(parse_built(&out)?.digest);
            let content = image_content(&runners[i])?;
            ensure!(
                content == serial[i],
                "{to}: runner {i}: {content:?} vs {:?}",
                serial[i]
            );
        }
        let mut full_hits = 0;
        for i in 0..FLEET {
            let fresh = fleet_runner(i)?;
            let b = build_app(&fresh, &["--cache-from", &from])?;
            ensure!(!b.stderr.contains("warning"), "{to}: {}", b.stderr);
            let ran = ran_lines(&b);
            ensure!(
                ran.len() <= 1 && ran.iter().all(|r| r.contains("echo variant-")),
                "{to}: variant {i} ran {ran:?}\n{}",
                b.stderr
            );
            ensure!(image_content(&fresh)? == serial[i], "{to}: variant {i}");
            if ran.is_empty() {
                // The winner's own image, layer for layer.
                ensure!(b.digest == digests[i], "{to}: variant {i}: {}", b.digest);
                full_hits += 1;
            }
        }
        ensure!(full_hits == 1, "{to}: {full_hits} variants hit fully");
    }
    Ok(())
}

/// What the fleet's image `app:1` of `t` holds.
fn image_content(t: &TestDir) -> anyhow::Result<String> {
    let out = t.ok(&["run", "--rm", "app:1", "cat", "/shared", "/variant"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An account SAS for azurite's development account (read, write, list, create on blobs and
/// containers until 2099), signed with python3's hmac: kiln only carries the token.
fn azurite_sas() -> anyhow::Result<String> {
    let script = r#"
import base64, hashlib, hmac, sys, urllib.parse
account, key = sys.argv[1], base64.b64decode(sys.argv[2])
f = dict(sv="2021-08-06", ss="b", srt="sco", sp="rwdlac", se="2099-01-01T00:00:00Z", spr="https,http")
to_sign = "\n".join([account, f["sp"], f["ss"], f["srt"], "", f["se"], "", f["spr"], f["sv"], "", ""])
f["sig"] = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
print(urllib.parse.urlencode(f))
"#;
    let out = Command::new("python3")
        .args(["-c", script, AZ_ACCOUNT, AZ_KEY])
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn azblob_sas_token_in_the_account_url_authorises_export_and_import() -> anyhow::Result<()> {
    let Some((t, srv)) = setup(Kind::Azblob)? else {
        return Ok(());
    };
    let sas = azurite_sas()?;
    let spec = |extra: &str| {
        format!(
            "type=azblob,account_url=http://127.0.0.1:{}/{AZ_ACCOUNT}?{sas},container=sas-cache,name=main{extra}",
            srv.port
        )
    };
    let first = build_app(&t, &["--cache-to", &spec(",mode=max")])?;
    let fresh = project()?;
    let b = build_app(&fresh, &["--cache-from", &spec("")])?;
    ensure!(
        ran_lines(&b).is_empty() && b.digest == first.digest,
        "{}",
        b.stderr
    );
    // A token with a wrong signature is refused, and the error names the container.
    let bad = spec("").replace("sig=", "sig=AAAA");
    let ctx = t.ctx.to_str().expect("utf-8 path");
    let out = t.kiln(&["build", "-t", "app:1", "--cache-to", &bad, ctx]);
    let err = text(&out);
    ensure!(
        !out.status.success() && err.contains("azblob container sas-cache") && err.contains("403"),
        "{err}"
    );
    Ok(())
}

/// Temporary credentials (an assumed role's key, secret and session token) work from the
/// options and from the standard environment variables; a wrong session token is refused by
/// the server and the error names the bucket.
#[test]
fn s3_session_token_credentials_are_signed_and_verified() -> anyhow::Result<()> {
    let Some((t, srv)) = setup(Kind::S3)? else {
        return Ok(());
    };
    let (id, secret, token) = &srv.creds.as_ref().expect("moto").temporary;
    let with_token = |token: &str| {
        format!(
            "{},access_key_id={id},secret_access_key={secret},session_token={token},name=tmp",
            srv.s3_base()
        )
    };
    let first = build_app(
        &t,
        &["--cache-to", &format!("{},mode=max", with_token(token))],
    )?;
    // A fresh runner with the credentials in AWS_ACCESS_KEY_ID and friends.
    let fresh = project()?;
    let ctx = fresh.ctx.to_str().expect("utf-8 path");
    let from = format!("{},name=tmp", srv.s3_base());
    let out = fresh
        .cmd(&[
            "build",
            "--progress",
            "rawjson",
            "-t",
            "app:1",
            "--cache-from",
            &from,
            ctx,
        ])
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", token)
        .output()?;
    ensure!(out.status.success(), "{}", text(&out));
    let b = parse_built(&out)?;
    ensure!(
        ran_lines(&b).is_empty() && b.digest == first.digest,
        "{}",
        b.stderr
    );
    let out = t.kiln(&[
        "build",
        "-t",
        "app:1",
        "--cache-to",
        &with_token("not-the-token"),
        t.ctx.to_str().expect("utf-8 path"),
    ]);
    let err = text(&out);
    ensure!(
        !out.status.success()
            && err.contains(&format!("s3 bucket {BUCKET}"))
            && err.contains("HTTP 400 InvalidToken"),
        "{err}"
    );
    Ok(())
}
