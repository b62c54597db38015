//! `RUN --network=host` and `kiln build --network host`.

use crate::harness::{TestDir, privileged, stdout, text};
use anyhow::ensure;

#[test]
fn run_network_host_and_build_network_flag_see_the_host_interfaces() -> anyhow::Result<()> {
    if !privileged(&[]) {
        return Ok(());
    }
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    let Some(iface) = host.first() else {
        eprintln!("skipped: the host has only lo");
        return Ok(());
    };
    let t = TestDir::new();
    t.import_busybox()?;
    t.write(
        "Dockerfile",
        "FROM busybox\nRUN --network=host ls /sys/class/net > /host\nRUN ls /sys/class/net > /dflt\n",
    );
    t.build("net:1", &[])?;
    let out = t.ok(&["run", "--rm", "net:1", "cat", "/host", "/dflt"])?;
    let s = stdout(&out);
    ensure!(s.matches(iface.as_str()).count() == 1, "{iface} in {s}");
    t.build("net:2", &["--network", "host", "--no-cache"])?;
    let out = t.ok(&["run", "--rm", "net:2", "cat", "/dflt"])?;
    ensure!(stdout(&out).contains(iface.as_str()), "{}", text(&out));
    Ok(())
}
