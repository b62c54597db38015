//! `RUN --mount` in builds: cache, secret, bind (from a stage, writable) and tmpfs mounts, and
//! `--network=none`.

use crate::harness::{busybox_dir, executed_runs, stdout, text};
use anyhow::ensure;

#[test]
fn cache_mount_persists_across_builds_and_stays_out_of_the_image() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\nARG N\nRUN --mount=type=cache,target=/cache,id=c1,sharing=locked,mode=0750 \
         echo run$N >> /cache/log && cat /cache/log > /seen && stat -c %a /cache > /mode\n",
    );
    t.build("cache:1", &["--build-arg", "N=1"])?;
    t.build("cache:2", &["--build-arg", "N=2"])?;
    let out = t.ok(&["run", "--rm", "cache:2", "cat", "/seen", "/mode"])?;
    ensure!(stdout(&out) == "run1\nrun2\n750\n", "{}", text(&out));
    let out = t.ok(&[
        "run",
        "--rm",
        "cache:2",
        "sh",
        "-c",
        "test -e /cache/log || echo absent",
    ])?;
    ensure!(
        stdout(&out) == "absent\n",
        "the cache leaked into the image: {}",
        text(&out)
    );
    // The directory lives under KILN_ROOT/cachemounts.
    let dirs: Vec<_> = std::fs::read_dir(t.root.join("cachemounts"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    ensure!(dirs.len() == 1, "{dirs:?}");
    Ok(())
}

#[test]
fn secret_mount_is_readable_absent_from_the_image_and_not_in_the_cache_key() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=secret,id=tok,required=true \
         stat -c %a /run/secrets/tok > /mode && wc -c < /run/secrets/tok > /len\n\
         RUN --mount=type=secret,id=tok,env=TOK sh -c 'test -n \"$TOK\" && echo ok > /env'\n",
    );
    let secret = t.dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cr3t-value")?;
    let arg = format!("id=tok,src={}", secret.display());
    let ev = t.build("secret:1", &["--secret", &arg])?;
    ensure!(executed_runs(&ev).len() == 2, "{:?}", executed_runs(&ev));
    let out = t.ok(&["run", "--rm", "secret:1", "cat", "/mode", "/len", "/env"])?;
    ensure!(stdout(&out) == "400\n12\nok\n", "{}", text(&out));
    // Neither the file nor its content is anywhere in the image's filesystem.
    let out = t.ok(&[
        "run",
        "--rm",
        "secret:1",
        "sh",
        "-c",
        "test -e /run/secrets/tok && echo file-left; \
         find / -xdev -type f | xargs grep -l s3cr3t-value; echo checked",
    ])?;
    ensure!(
        stdout(&out) == "checked\n",
        "secret left in the image: {}",
        text(&out)
    );
    // A changed secret does not invalidate the cache.
    std::fs::write(&secret, "another-value-entirely")?;
    let ev = t.build("secret:2", &["--secret", &arg])?;
    ensure!(
        executed_runs(&ev).is_empty(),
        "re-ran: {:?}",
        executed_runs(&ev)
    );
    // A required secret that is not given fails the build.
    let out = t.kiln(&[
        "build",
        "--no-cache",
        "-t",
        "secret:3",
        t.ctx.to_str().expect("utf-8"),
    ]);
    ensure!(
        !out.status.success() && text(&out).contains("tok"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn bind_mount_from_a_stage_tmpfs_and_network_none() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox AS src\nRUN mkdir /data && echo one > /data/a\nRUN echo two > /data/b\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=src,source=/data,target=/mnt cat /mnt/a /mnt/b > /got \
         && (touch /mnt/x 2>/dev/null && echo writable || echo readonly) >> /got\n\
         RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/f && grep -c tmpfs /proc/mounts > /tmpfs\n\
         RUN --network=none sh -c 'ls /sys/class/net > /nets'\n",
    );
    t.build("bind:1", &[])?;
    let out = t.ok(&["run", "--rm", "bind:1", "cat", "/got"])?;
    ensure!(stdout(&out) == "one\ntwo\nreadonly\n", "{}", text(&out));
    let out = t.ok(&[
        "run",
        "--rm",
        "bind:1",
        "sh",
        "-c",
        "ls -A /mnt /scratch; cat /nets",
    ])?;
    let s = stdout(&out);
    ensure!(
        !s.contains("a\n") && !s.contains("f\n"),
        "a mount leaked into the image: {s}"
    );
    ensure!(s.lines().any(|l| l == "lo") && !s.contains("eth"), "{s}");
    Ok(())
}

#[test]
fn writable_bind_mounts_never_change_the_context_or_the_stage() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write("in.txt", "context\n");
    t.write(
        "Dockerfile",
        "FROM busybox AS src\nRUN echo stage > /s.txt\n\
         FROM busybox\n\
         RUN --mount=type=bind,rw,target=/ctx sh -c 'echo changed > /ctx/in.txt && touch /ctx/new && cat /ctx/in.txt > /got'\n\
         RUN --mount=type=bind,from=src,rw,target=/st sh -c 'echo changed > /st/s.txt && cat /st/s.txt >> /got'\n\
         COPY --from=src /s.txt /s.txt\n",
    );
    t.build("rw:1", &[])?;
    ensure!(std::fs::read_to_string(t.ctx.join("in.txt"))? == "context\n");
    ensure!(!t.ctx.join("new").exists(), "a write reached the context");
    let out = t.ok(&["run", "--rm", "rw:1", "cat", "/got", "/s.txt"])?;
    ensure!(
        stdout(&out) == "changed\nchanged\nstage\n",
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn locked_cache_mounts_serialize_parallel_steps_without_stalling() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    let mut df = String::new();
    for s in ["a", "b", "c"] {
        df.push_str(&format!(
            "FROM busybox AS {s}\nRUN --mount=type=cache,target=/c,id=L,sharing=locked \
             sh -c 'test ! -e /c/busy && touch /c/busy && sleep 1 && rm /c/busy && echo {s} >> /c/log && cp /c/log /log-{s}'\n"
        ));
    }
    df.push_str(
        "FROM busybox\nCOPY --from=a /log-a /\nCOPY --from=b /log-b /\nCOPY --from=c /log-c /\n",
    );
    t.write("Dockerfile", &df);
    t.build("locked:1", &["--jobs", "3"])?;
    let out = t.ok(&["run", "--rm", "locked:1", "sh", "-c", "cat /log-a /log-b /log-c | sort | uniq -c | wc -l; wc -l < /log-a; wc -l < /log-b; wc -l < /log-c"])?;
    // Each step saw nobody else inside (`busy` absent), and the logs grew one at a time:
    // lengths 1, 2 and 3 in some order.
    let lines: Vec<String> = stdout(&out).lines().map(|l| l.trim().to_owned()).collect();
    let mut lens = lines[1..].to_vec();
    lens.sort();
    ensure!(lines[0] == "3" && lens == ["1", "2", "3"], "{}", text(&out));
    Ok(())
}

#[test]
fn cache_mount_from_a_stage_seeds_a_new_cache_only() -> anyhow::Result<()> {
    let Some(t) = busybox_dir(&[])? else {
        return Ok(());
    };
    t.write(
        "Dockerfile",
        "FROM busybox AS seed\nRUN mkdir -p /s && echo seeded > /s/first\n\
         FROM busybox\nARG N\n\
         RUN --mount=type=cache,target=/c,id=S,from=seed,source=/s \
         sh -c 'echo run$N >> /c/log; ls /c > /ls; cat /c/log > /log; rm /c/first || true'\n",
    );
    t.build("seed:1", &["--build-arg", "N=1"])?;
    t.build("seed:2", &["--build-arg", "N=2"])?;
    let out = t.ok(&["run", "--rm", "seed:1", "cat", "/ls"])?;
    ensure!(stdout(&out) == "first\nlog\n", "{}", text(&out));
    // The first build removed `first`; an existing cache is not seeded again.
    let out = t.ok(&["run", "--rm", "seed:2", "cat", "/ls", "/log"])?;
    ensure!(stdout(&out) == "log\nrun1\nrun2\n", "{}", text(&out));
    Ok(())
}
