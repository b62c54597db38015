//! `kiln system df`: what the store holds, by kind. `kiln system check`: whether anything on
//! the host (dockerd's or another firewall's FORWARD drop, br_netfilter, ip_forward) still
//! blocks the traffic of kiln's bridges.

use anyhow::Context as _;
use executor::net::Xtables as _;
use std::io::Write as _;
use std::path::Path;

/// `kiln system` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SystemCommand {
    /// Show disk usage: images, blobs, layer snapshots, build cache records, cache mounts.
    Df,
    /// Remove build cache (the same as `kiln prune`).
    Prune(crate::prune::PruneArgs),
    /// Check that the host's packet filters let kiln's bridges through (exit 1 when not).
    Check {
        /// First reinstall kiln's firewall rules and turn IPv4 forwarding on, as `kiln run`
        /// does (after a firewall reload flushed them).
        #[arg(long)]
        fix: bool,
    },
}

/// Runs a `kiln system` subcommand.
pub fn system(cmd: SystemCommand) -> anyhow::Result<()> {
    match cmd {
        SystemCommand::Df => df(),
        SystemCommand::Prune(a) => {
            // What dead containers left on the host goes too (see `netrun::reclaim_orphans`).
            crate::netrun::reclaim_orphans();
            crate::prune::prune(a)
        }
        SystemCommand::Check { fix } => check(fix),
    }
}

/// What on the host still blocks `bridges` (see [`executor::net::firewall::check`]).
pub(crate) fn blockers(
    xt: &mut executor::net::XtablesCommand,
    bridges: &[String],
) -> anyhow::Result<Vec<executor::net::firewall::Blocker>> {
    // Without nft (or its JSON support) the native-table part is skipped, not failed.
    let nft = executor::net::NftCommand::default().list_chains_json().ok();
    Ok(executor::net::firewall::check(
        xt,
        executor::net::nft::TABLE,
        bridges,
        Path::new("/proc/sys"),
        nft.as_deref(),
    )?)
}

fn check(fix: bool) -> anyhow::Result<()> {
    let state = crate::netrun::state_dir();
    let proc_sys = Path::new("/proc/sys");
    if fix {
        let mut nets = executor::net::Networks::open(&state)
            .with_context(|| format!("opening the network state at {}", state.display()))?;
        executor::net::enable_ip_forward(proc_sys).context("enabling IPv4 forwarding")?;
        nets.resync_rules().context("reinstalling kiln's rules")?;
    }
    let ipam = executor::net::Ipam::open(&state)
        .with_context(|| format!("opening the network state at {}", state.display()))?;
    let bridges: Vec<String> = ipam.networks()?.into_iter().map(|n| n.bridge).collect();
    let table = executor::net::nft::TABLE;
    let chain = executor::net::firewall::chain_name(table);
    let mut xt = executor::net::XtablesCommand::default();
    let mut out = std::io::stdout().lock();
    for b in xt.backends() {
        let Some(saved) = xt.save(b)? else {
            writeln!(out, "{}: not installed", b.name())?;
            continue;
        };
        let t = executor::net::firewall::FilterTable::parse(&saved);
        let jump = format!("-j {chain}");
        let from: Vec<&str> = ["DOCKER-USER", "FORWARD"]
            .into_iter()
            .filter(|c| t.chain_rules(c).contains(&jump.as_str()))
            .collect();
        writeln!(
            out,
            "{}: FORWARD policy {}, {}",
            b.name(),
            t.forward_policy
                .as_deref()
                .unwrap_or("none (no filter table)"),
            if from.is_empty() {
                format!("no jump to {chain}")
            } else {
                format!("{chain} jumped to from {}", from.join(", "))
            }
        )?;
    }
    // A network sharing addresses with something else on the host (kiln0 made on 10.88.0.0/16
    // before podman's bridge, or a VPN's route added since): traffic to those addresses goes
    // one way only. A warning, not a blocker: kiln chooses free subnets itself
    // (`executor::net::hostnet`) and keeps a stored choice, as dockerd does.
    if let Ok(in_use) = executor::net::hostnet::host_in_use() {
        for n in ipam.networks()? {
            let clash = in_use.iter().find(|u| {
                u.overlaps(n.subnet) && u.link().is_none_or(|l| !bridges.iter().any(|b| b == l))
            });
            let Some(u) = clash else { continue };
            let again = if n.name == executor::net::ipam::DEFAULT_NETWORK {
                format!(
                    "`ip link del {}` and removing {} make kiln choose again",
                    n.bridge,
                    state.join(&n.name).join("network.json").display()
                )
            } else {
                format!("`kiln network rm {}` and creating it again move it", n.name)
            };
            writeln!(
                out,
                "warning: network {} ({} on {}) shares addresses with {u}; with no container on \
                 it, {again}",
                n.name, n.subnet, n.bridge
            )?;
        }
    }
    let found = blockers(&mut xt, &bridges)?;
    if found.is_empty() {
        writeln!(
            out,
            "ok: nothing on this host blocks kiln's bridges ({})",
            bridges.join(", ")
        )?;
        return Ok(());
    }
    for f in &found {
        writeln!(out, "blocked: {f}")?;
    }
    out.flush()?;
    anyhow::bail!(
        "{} thing(s) on this host block kiln's bridges (see above)",
        found.len()
    )
}

fn df() -> anyhow::Result<()> {
    let store = crate::open_store()?;
    let u = store.disk_usage()?;
    // The store counts the images' index files; what an image weighs is its layers (each
    // shared layer once, as docker's `system df` counts them), the same sizes `kiln images`
    // shows.
    let mut layers = std::collections::BTreeMap::new();
    let mut images = std::collections::BTreeSet::new();
    for (_, d) in store.list_images().context("listing images")? {
        if !images.insert(d.clone()) {
            continue;
        }
        let image = store
            .image(&d)
            .with_context(|| format!("reading image {d}"))?;
        for l in &image.manifest.layers {
            layers.insert(l.digest.clone(), l.size);
        }
    }
    let image_usage = (images.len(), layers.values().sum::<u64>());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16} {:>8} {:>12}", "TYPE", "COUNT", "SIZE")?;
    writeln!(
        out,
        "{:<16} {:>8} {:>12}",
        "Images",
        image_usage.0,
        kroot::size::human(image_usage.1)
    )?;
    for (name, c) in [
        ("Blobs", u.blobs),
        ("Snapshots", u.snapshots),
        ("Build cache", u.cache_records),
        ("Cache mounts", u.cache_mounts),
        ("Temp", u.tmp),
    ] {
        writeln!(
            out,
            "{name:<16} {:>8} {:>12}",
            c.count,
            kroot::size::human(c.bytes)
        )?;
    }
    // docker's "Local Volumes": every volume and the bytes of its files.
    let vols = executor::volume::Volumes::new(store.dir(kroot::Dir::Volumes)).list();
    let bytes = vols
        .iter()
        .map(|v| executor::volume::tree_size(&v.mountpoint))
        .sum();
    writeln!(
        out,
        "{:<16} {:>8} {:>12}",
        "Local Volumes",
        vols.len(),
        kroot::size::human(bytes)
    )?;
    Ok(())
}
