//! `kiln network create|ls|rm`: user-defined bridge networks.
//!
//! A user network is a definition in the host-wide lease store (`/run/kiln/networks/NAME/`):
//! its bridge (`kiln-<hash>`, created on first attach) and subnet (given, or the first /24 that
//! nothing on the host uses: `executor::net::hostnet`). Containers on the same user
//! network find each other by name through /etc/hosts (see `executor::container::network::refresh_hosts`).

use anyhow::Context as _;
use std::io::Write as _;

/// `kiln network` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Define a user network.
    Create {
        /// Subnet in CIDR form (default: the first /24 of 10.90.0.0/16 that overlaps no other
        /// network and no route, address or nameserver of the host).
        #[arg(long)]
        subnet: Option<String>,
        /// Network name.
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Remove user networks (fails while containers are attached).
    #[command(alias = "remove")]
    Rm {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs a network subcommand.
pub fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    crate::netrun::reclaim_orphans();
    let mut out = std::io::stdout().lock();
    match cmd {
        Cmd::Create { subnet, name } => {
            executor::names::check_network(&name)?;
            let subnet = subnet
                .as_deref()
                .map(|s| {
                    s.parse::<executor::net::Subnet>()
                        .with_context(|| format!("--subnet {s}"))
                })
                .transpose()?;
            let ipam = executor::net::Ipam::open(crate::netrun::state_dir())?;
            // Without --subnet: a /24 that nothing on the host routes (this namespace is the
            // bridges': the session's when rootless). An explicit one is taken as dockerd does.
            let host = match subnet {
                Some(_) => Vec::new(),
                None => executor::net::hostnet::host_in_use()
                    .context("listing the host's routes and addresses")?,
            };
            let config = ipam
                .define_network(&name, subnet, &host)
                .with_context(|| format!("creating network {name}"))?;
            writeln!(out, "{}", config.name)?;
        }
        Cmd::Ls => {
            let ipam = executor::net::Ipam::open(crate::netrun::state_dir())?;
            writeln!(
                out,
                "{:<20} {:<16} {:<18} {:<15} CONTAINERS",
                "NAME", "BRIDGE", "SUBNET", "GATEWAY"
            )?;
            for n in ipam.networks()? {
                let count = ipam
                    .leases(&n.name)?
                    .iter()
                    .filter(|l| !l.container.starts_with("pool-"))
                    .count();
                writeln!(
                    out,
                    "{:<20} {:<16} {:<18} {:<15} {count}",
                    n.name,
                    n.bridge,
                    n.subnet.to_string(),
                    n.gateway.to_string()
                )?;
            }
            // Tell when the host's firewall still drops the bridges' traffic (details and the
            // fix: `kiln system check`). A failure to look is not an error of `ls`.
            let bridges: Vec<String> = ipam.networks()?.into_iter().map(|n| n.bridge).collect();
            let mut xt = executor::net::XtablesCommand::default();
            if let Ok(found) = crate::system::blockers(&mut xt, &bridges)
                && !found.is_empty()
            {
                eprintln!(
                    "warning: {} thing(s) on this host block kiln's bridges: run `kiln system check`",
                    found.len()
                );
            }
        }
        Cmd::Rm { names } => {
            let mut nets = executor::net::Networks::open(crate::netrun::state_dir())?;
            for n in &names {
                executor::names::check_network(n)?;
                anyhow::ensure!(
                    n != executor::net::ipam::DEFAULT_NETWORK,
                    "the default network {n} cannot be removed"
                );
                let leases = nets.ipam().leases(n)?;
                if !leases.is_empty() {
                    let who: Vec<&str> = leases.iter().map(|l| l.container.as_str()).collect();
                    anyhow::bail!(
                        "network {n} is in use by {} container(s): {}\nhint: remove them first (kiln rm -f {})",
                        who.len(),
                        who.join(", "),
                        who.join(" ")
                    );
                }
                nets.remove_network(n)
                    .with_context(|| format!("removing network {n}"))?;
                writeln!(out, "{n}")?;
            }
        }
    }
    Ok(())
}
