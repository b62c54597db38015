//! `kiln info` and `kiln stats`: what docker's commands of those names show, for a daemonless
//! store (the counts, the host, the store root) and for containers read from `/proc`.

use anyhow::Context as _;
use std::io::Write;
use std::time::Duration;

/// `kiln info` flags.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Go template over docker's field names (`{{.Containers}}`, `{{.KilnRootDir}}`).
    #[arg(short, long)]
    format: Option<String>,
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `MemTotal` in bytes.
fn mem_total() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn ncpu() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `kiln info`.
pub fn info(a: &InfoArgs) -> anyhow::Result<()> {
    let states = crate::containers::all()?;
    let running = states.iter().filter(|s| s.is_running()).count();
    let store = crate::open_store()?;
    let images = store.list_images().context("listing images")?;
    let distinct: std::collections::BTreeSet<_> = images.iter().map(|(_, d)| d).collect();
    let uname = rustix::system::uname();
    let cgroup_v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default();
    let v = serde_json::json!({
        "Containers": states.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": states.len() - running,
        "Images": distinct.len(),
        "Driver": "overlay",
        "CgroupVersion": if cgroup_v2 { "2" } else { "1" },
        "KernelVersion": uname.release().to_string_lossy(),
        "OperatingSystem": os,
        "OSType": std::env::consts::OS,
        "Architecture": std::env::consts::ARCH,
        "NCPU": ncpu(),
        "MemTotal": mem_total(),
        "Name": uname.nodename().to_string_lossy(),
        "KilnRootDir": crate::kiln_root()?.display().to_string(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
    });
    if let Some(f) = &a.format {
        let t = crate::gotmpl::Template::parse(f)?;
        return Ok(writeln!(std::io::stdout().lock(), "{}", t.render(&v)?)?);
    }
    let s = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        o => o.to_string(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "Client: kiln {} (daemonless)", s("ServerVersion"))?;
    writeln!(out, " Containers: {}", s("Containers"))?;
    writeln!(out, "  Running: {}", s("ContainersRunning"))?;
    writeln!(out, "  Paused: 0")?;
    writeln!(out, "  Stopped: {}", s("ContainersStopped"))?;
    writeln!(out, " Images: {}", s("Images"))?;
    writeln!(out, " Storage Driver: overlay")?;
    writeln!(out, " Cgroup Version: {}", s("CgroupVersion"))?;
    writeln!(out, " Kernel Version: {}", s("KernelVersion"))?;
    writeln!(out, " Operating System: {}", s("OperatingSystem"))?;
    writeln!(out, " OSType: {}", s("OSType"))?;
    writeln!(out, " Architecture: {}", s("Architecture"))?;
    writeln!(out, " CPUs: {}", s("NCPU"))?;
    writeln!(
        out,
        " Total Memory: {}",
        kroot::size::binary(v["MemTotal"].as_u64().unwrap_or(0))
    )?;
    writeln!(out, " Name: {}", s("Name"))?;
    writeln!(out, " Kiln Root Dir: {}", s("KilnRootDir"))?;
    Ok(())
}

/// `kiln stats` flags.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print one sample and exit (without it: a new sample every second until interrupted).
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Go template over docker's field names (`{{.Name}} {{.MemUsage}}`).
    #[arg(long)]
    format: Option<String>,
    /// Containers (default: every running one).
    names: Vec<String>,
}

/// CPU ticks used by `pids` (user + system).
fn ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let stat = read(&format!("/proc/{p}/stat"));
            let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            // After the command: state is field 3, utime 14 and stime 15 (1-based).
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// All CPUs' ticks since boot (the first line of /proc/stat).
fn system_ticks() -> u64 {
    read("/proc/stat").lines().next().map_or(0, |l| {
        l.split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    })
}

fn sample(names: &[String]) -> anyhow::Result<Vec<(crate::containers::State, Vec<i32>, u64)>> {
    names
        .iter()
        .map(|n| {
            let (s, pids) = crate::containers::processes(n)?;
            let t = ticks(&pids);
            Ok((s, pids, t))
        })
        .collect()
}

fn rows(names: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
    let sys0 = system_ticks();
    let first = sample(names)?;
    std::thread::sleep(Duration::from_millis(500));
    let sys1 = system_ticks();
    let mut out = Vec::new();
    for (name, (s, pids0, t0)) in names.iter().zip(first) {
        let (pids, t1) = match crate::containers::processes(name) {
            Ok((_, p)) => {
                let t = ticks(&p);
                (p, t)
            }
            Err(_) => (pids0, t0),
        };
        let cpu = if sys1 > sys0 {
            (t1.saturating_sub(t0)) as f64 / (sys1 - sys0) as f64 * ncpu() as f64 * 100.0
        } else {
            0.0
        };
        let mut rss = 0u64;
        let (mut rd, mut wr, mut threads) = (0u64, 0u64, 0usize);
        for p in &pids {
            let status = read(&format!("/proc/{p}/status"));
            let kb = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            rss += kb("VmRSS:") * 1024;
            threads += kb("Threads:") as usize;
            let io = read(&format!("/proc/{p}/io"));
            let field = |k: &str| {
                io.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            rd += field("read_bytes:");
            wr += field("write_bytes:");
        }
        let (mut rx, mut tx) = (0u64, 0u64);
        if let Some(p) = pids.first() {
            for l in read(&format!("/proc/{p}/net/dev")).lines().skip(2) {
                let Some((iface, rest)) = l.split_once(':') else {
                    continue;
                };
                if iface.trim() == "lo" {
                    continue;
                }
                let v: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                rx += v.first().copied().unwrap_or(0);
                tx += v.get(8).copied().unwrap_or(0);
            }
        }
        let limit = s.limits.memory.unwrap_or_else(mem_total);
        let hex = s.id.len() > 12 && s.id.bytes().all(|b| b.is_ascii_hexdigit());
        out.push(serde_json::json!({
            "Container": name,
            "ID": if hex { &s.id[..12] } else { &s.id },
            "Name": s.name(),
            "CPUPerc": format!("{cpu:.2}%"),
            "MemUsage": format!("{} / {}", kroot::size::binary(rss), kroot::size::binary(limit)),
            "MemPerc": format!("{:.2}%", if limit > 0 { rss as f64 / limit as f64 * 100.0 } else { 0.0 }),
            "NetIO": format!("{} / {}", kroot::size::human(rx), kroot::size::human(tx)),
            "BlockIO": format!("{} / {}", kroot::size::human(rd), kroot::size::human(wr)),
            "PIDs": threads.to_string(),
        }));
    }
    Ok(out)
}

/// Docker's column titles for `stats --format 'table ...'`.
const HEADERS: &[(&str, &str)] = &[
    ("Container", "CONTAINER"),
    ("ID", "CONTAINER ID"),
    ("Name", "NAME"),
    ("CPUPerc", "CPU %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("MemPerc", "MEM %"),
    ("NetIO", "NET I/O"),
    ("BlockIO", "BLOCK I/O"),
    ("PIDs", "PIDS"),
];

/// `kiln stats`.
pub fn stats(a: &StatsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let default = "table {{.ID}}\\t{{.Name}}\\t{{.CPUPerc}}\\t{{.MemUsage}}\\t{{.MemPerc}}\\t{{.NetIO}}\\t{{.BlockIO}}\\t{{.PIDs}}";
    let format = a.format.as_deref().unwrap_or(default);
    loop {
        let names = if a.names.is_empty() {
            let mut running: Vec<String> = crate::containers::all()?
                .into_iter()
                .filter(|s| s.is_running())
                .map(|s| s.id)
                .collect();
            running.sort();
            running
        } else {
            a.names.clone()
        };
        let rows = rows(&names)?;
        if !a.no_stream {
            // Home and clear, as docker redraws.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        crate::containers::print_rows(out, format, HEADERS, &rows)?;
        out.flush()?;
        if a.no_stream {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
