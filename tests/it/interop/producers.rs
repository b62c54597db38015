//! kiln as a consumer of other tools' images: pull, inspect, run, build `FROM`, push back;
//! BuildKit's default PATH; `kiln run`'s pull and platform rules.

use super::*;

/// Every produced image: kiln pulls it (printing the registry's digest), inspect shows that
/// digest as its ID, it runs (its own CMD, and a shell), a build `FROM` it runs with the
/// image's or BuildKit's default PATH, and pushing it back gives the same digest.
#[test]
fn images_of_docker_buildah_podman_skopeo_and_null_fixtures_pull_run_build_and_push_back()
-> anyhow::Result<()> {
    let Some(w) = world() else { return Ok(()) };
    let t = TestDir::new();
    let mut failures = Vec::new();
    for p in &w.produced {
        if let Err(e) = check_producer(w, &t, p) {
            failures.push(format!("{}: {e:#}", p.name));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} images failed:\n{}",
        failures.len(),
        w.produced.len(),
        failures.join("\n\n")
    );
    Ok(())
}

fn check_producer(w: &World, t: &TestDir, p: &Produced) -> anyhow::Result<()> {
    let r = p.reference.as_str();
    let top = w.registry_digest(r)?;
    let pulled = t.ok(&["pull", r])?;
    ensure!(
        stdout(&pulled).trim() == top.to_string(),
        "pull printed {}, the registry has {top}",
        stdout(&pulled)
    );
    let doc: serde_json::Value = serde_json::from_slice(&t.ok(&["inspect", r])?.stdout)?;
    let id = doc[0]["Id"]
        .as_str()
        .context("inspect has an Id")?
        .to_owned();
    let single = p.name != "nested-index";
    if single {
        ensure!(
            id == top.to_string(),
            "inspect Id {id}, the registry's manifest is {top}"
        );
    }
    ensure!(
        doc[0]["RepoDigests"].as_array().is_some_and(|a| a
            .iter()
            .any(|d| d.as_str().is_some_and(|d| d.ends_with(&top.to_string())))),
        "RepoDigests lack {top}: {doc}"
    );
    if let Some(want) = p.cmd_output {
        let out = t.ok(&["run", "--rm", "--network", "none", r])?;
        ensure!(stdout(&out) == want, "run printed {:?}", stdout(&out));
    }
    if p.has_shell {
        let out = t.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            r,
            "sh",
            "-c",
            "echo shell-ok",
        ])?;
        ensure!(stdout(&out) == "shell-ok\n", "{}", text(&out));
    }

    // FROM it: a RUN sees a PATH (the image's, or BuildKit's default), and the config has it.
    let bin_from = if p.has_shell {
        String::new()
    } else {
        format!("COPY --from={} / /\n", w.base)
    };
    t.write(
        "Dockerfile",
        &format!("FROM {r}\n{bin_from}RUN echo \"$PATH\" > /path\nCMD [\"cat\", \"/path\"]\n"),
    );
    let tag = format!("from-{}:1", p.name);
    t.build(&tag, &[])?;
    let built: serde_json::Value = serde_json::from_slice(&t.ok(&["inspect", &tag])?.stdout)?;
    let path = built[0]["Config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.strip_prefix("PATH="))
        .next()
        .with_context(|| format!("no PATH in the built config: {built}"))?
        .to_owned();
    let out = t.ok(&["run", "--rm", "--network", "none", &tag])?;
    ensure!(
        stdout(&out) == format!("{path}\n"),
        "RUN saw PATH {:?}, the config has {path}",
        stdout(&out)
    );
    let unmodelled = ["container_config", "docker_version", "container"];
    for k in unmodelled {
        ensure!(
            built[0].get(k).is_none(),
            "{k} leaked into a config kiln wrote: {built}"
        );
    }

    // Pulled, then pushed elsewhere: the same digest (as `skopeo copy`), the same bytes.
    if single {
        let copy = format!("{}/copy/{}:1", w.host, p.name);
        let pushed = t.ok(&["push", r, &copy])?;
        if p.name == NONDISTRIBUTABLE {
            // Like docker, push leaves non-distributable layers to their URLs.
            let manifest: serde_json::Value = serde_json::from_slice(
                &tool(
                    "skopeo",
                    &[
                        "inspect",
                        "--tls-verify=false",
                        "--raw",
                        &format!("docker://{r}"),
                    ],
                )?
                .stdout,
            )?;
            let layer = manifest["layers"][0]["digest"]
                .as_str()
                .context("a layer")?;
            let head = tool(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-I",
                    &format!("http://{}/v2/copy/{}/blobs/{layer}", w.host, p.name),
                ],
            )?;
            ensure!(
                stdout(&head) == "404",
                "the non-distributable layer was uploaded ({})",
                stdout(&head)
            );
        }
        ensure!(
            stdout(&pushed).trim() == top.to_string(),
            "push printed {}, the original is {top}",
            stdout(&pushed)
        );
        ensure!(
            w.registry_digest(&copy)? == top,
            "the copy's digest differs"
        );
    }
    Ok(())
}

/// A base image without PATH (`docker import`): BuildKit's default PATH goes into the built
/// config and every RUN, as docker's own BuildKit does, and `kiln run` applies it too.
#[test]
fn default_path_matches_docker_buildkit_on_a_base_without_path() -> anyhow::Result<()> {
    let Some(w) = world() else { return Ok(()) };
    let t = TestDir::new();
    let df = format!(
        "FROM {}\nRUN echo \"$PATH\" > /path\nCMD [\"cat\", \"/path\"]\n",
        w.base
    );
    t.write("Dockerfile", &df);
    t.build("path:kiln", &[])?;
    let ctx = t.ctx.to_str().context("utf-8")?;
    let theirs = format!("{}-path", w.tag);
    docker(&["build", "-q", "-t", &theirs, ctx], true)?;
    let env_of = |json: &[u8]| -> anyhow::Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(json)?;
        Ok(v[0]["Config"]["Env"].clone())
    };
    let docker_env = env_of(&docker(&["inspect", &theirs], false)?.stdout);
    let docker_run = docker(&["run", "--rm", "--network", "none", &theirs], false);
    docker(&["rmi", "-f", &theirs], false)?;
    let kiln_env = env_of(&t.ok(&["inspect", "path:kiln"])?.stdout)?;
    ensure!(
        kiln_env == docker_env?,
        "kiln Env {kiln_env}, BuildKit's differ"
    );
    let kiln_run = t.ok(&["run", "--rm", "--network", "none", "path:kiln"])?;
    ensure!(
        stdout(&kiln_run) == stdout(&docker_run?),
        "RUN saw another PATH than BuildKit's RUN"
    );
    ensure!(
        stdout(&kiln_run) == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
        "{}",
        text(&kiln_run)
    );
    // `kiln run` of the base itself: the same default for the container.
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &w.base,
        "sh",
        "-c",
        "echo $PATH",
    ])?;
    ensure!(stdout(&out) == stdout(&kiln_run), "{}", text(&out));
    Ok(())
}

/// `kiln run` pulls a missing image (docker's `--pull missing`), `--pull never` refuses with a
/// hint, and a single-platform image of another architecture is refused in docker's words
/// unless `--platform` asks for it.
#[test]
fn run_pulls_missing_images_and_checks_the_platform() -> anyhow::Result<()> {
    let Some(w) = world() else { return Ok(()) };
    let t = TestDir::new();
    let never = t.kiln(&["run", "--rm", "--pull", "never", &w.base, "true"]);
    ensure!(
        !never.status.success()
            && text(&never).contains("no such image")
            && text(&never).contains("hint:"),
        "{}",
        text(&never)
    );
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &w.base,
        "echo",
        "pulled-on-run",
    ])?;
    ensure!(stdout(&out) == "pulled-on-run\n", "{}", text(&out));
    ensure!(
        text(&out).contains(&format!("Unable to find image '{}' locally", w.base)),
        "{}",
        text(&out)
    );
    let again = t.ok(&["run", "--rm", "--network", "none", &w.base, "echo", "local"])?;
    ensure!(!text(&again).contains("Unable to find"), "{}", text(&again));

    let refused = t.kiln(&["run", "--rm", &w.arm64, "true"]);
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let words = format!(
        "image with reference {} was found but does not match the specified platform: wanted linux/{}, actual: linux/{other}",
        w.arm64,
        host_arch()
    );
    ensure!(
        !refused.status.success() && text(&refused).contains(&words),
        "{}",
        text(&refused)
    );
    t.ok(&["pull", "--platform", &format!("linux/{other}"), &w.arm64])?;
    Ok(())
}
