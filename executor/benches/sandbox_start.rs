//! Start-to-exit time of `true` in a RUN sandbox (new mount, pid, uts, ipc and net
//! namespaces, overlay root over a busybox layer, /proc, /dev, /sys, masked paths, pivot_root,
//! user resolution, capability drop), through `sandbox::command` as the solver starts it.
//! Each run gets a fresh upper dir, as a RUN step does.
//!
//! `cargo bench -p kiln-executor --bench sandbox_start [-- RUNS]` (needs root). Prints the
//! median and the 90th percentile; the target is a median under 20 ms.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use executor::spec::{InitSpec, Network, Rootfs, RunSpec};

fn busybox_root(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    for applet in ["true", "sh"] {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__init") {
        executor::init::main(args);
    }
    let runs: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    if !rustix::process::geteuid().is_root() {
        eprintln!("sandbox_start: needs root, skipped");
        return;
    }
    // As `kiln build` does: sandboxes are born under the device policy.
    executor::devices::confine_self().expect("device policy");
    security_costs();
    let dir = tempfile::tempdir().expect("tempdir");
    let lower = dir.path().join("lower");
    busybox_root(&lower).expect("busybox root");
    let exe = std::env::current_exe().expect("current exe");
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 3 {
        let run_dir = dir.path().join(format!("run{i}"));
        std::fs::create_dir_all(run_dir.join("upper")).expect("upper");
        std::fs::create_dir_all(run_dir.join("work")).expect("work");
        let spec = InitSpec::Run(RunSpec {
            rootfs: Rootfs {
                lowers: vec![lower.clone()],
                upper: run_dir.join("upper"),
                work: run_dir.join("work"),
            },
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            hostname: "bench".into(),
            network: Network::Loopback,
            mounts: vec![],
            tty: false,
            security: Default::default(),
        });
        let start = Instant::now();
        let status = executor::sandbox::command(&exe, &spec)
            .expect("command")
            .stdin(Stdio::null())
            .status()
            .expect("spawn");
        let elapsed = start.elapsed();
        assert!(status.success(), "sandbox failed: {status}");
        // The first runs warm the page cache.
        if i >= 3 {
            times.push(elapsed);
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "sandbox_start: {runs} runs of `true`: median {:.2} ms, p90 {:.2} ms, min {:.2} ms",
        ms(median),
        ms(p90),
        ms(times[0])
    );
}

/// The median of `f` over `n` calls, in microseconds.
fn median_us(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2].as_secs_f64() * 1e6
}

/// What issue 10 added to every RUN's `__init`, measured alone (the whole start-to-exit
/// time is too noisy on shared machines to show a difference of this size): the device
/// policy check of a process born inside it, and reading plus compiling docker's profile.
/// Loading the filter is one syscall copying the program (timed in a child, once).
fn security_costs() {
    let devices = median_us(200, || {
        executor::devices::confine_self().expect("device policy");
    });
    let caps = executor::seccomp::capability_names(executor::init::default_capabilities());
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let target = executor::seccomp::Target::native(caps, &release).expect("arch");
    let mut filter = None;
    let seccomp = median_us(200, || {
        let p = executor::seccomp::Profile::docker_default();
        filter = Some(executor::seccomp::compile(&p, &target).expect("compiles"));
    });
    let program = filter.expect("compiled").program;
    let load = match executor::sys::fork().expect("fork") {
        executor::sys::Forked::Child => {
            rustix::thread::set_no_new_privs(true).expect("no_new_privs");
            let s = Instant::now();
            executor::sys::load_seccomp(&program).expect("load");
            // The exit status carries tens of microseconds.
            let us = (s.elapsed().as_micros() / 10).min(255) as i32;
            executor::sys::exit_immediately(us)
        }
        executor::sys::Forked::Parent(pid) => {
            let pid = rustix::process::Pid::from_raw(pid).expect("pid");
            let (_, st) =
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                    .expect("wait")
                    .expect("status");
            st.exit_status().unwrap_or(255) * 10
        }
    };
    println!(
        "sandbox_start: per RUN: device policy check {devices:.0} µs, seccomp profile read + \
         compile {seccomp:.0} µs ({} instructions), filter load {load} µs",
        program.len()
    );
}
