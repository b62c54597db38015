//! Exec ops (RUN): the sandbox spec of a process run, with its mounts and network.

use super::runner::Runner;
use super::{LayerMtimes, NodeResult, SolveError, SolveOp, location};
use crate::graph::{ExecOp, NetworkMode, NodeId};
use cache::oci::Digest;
use context::Ignore;
use executor::spec::{InitSpec, Network, Rootfs, RunSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a RUN step holds until its sandbox exits: mount locks and temps, its network lease.
pub(super) type RunGuards = (crate::mounts::Guards, Option<executor::net::BuildLease>);

impl SolveOp for ExecOp {
    fn cache_map(&self, keys: &[Option<Digest>], contents: &[Option<Digest>]) -> Digest {
        crate::key::exec_key(self, keys, contents)
    }

    async fn exec(
        &self,
        r: &Runner,
        n: NodeId,
        root: Option<&NodeResult>,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError> {
        let root = root.expect("an exec op has a root");
        if let Some(p) = &r.graph.nodes[n].platform {
            let host = cache::oci::Platform::host();
            let dir = std::path::Path::new(executor::binfmt::BINFMT_MISC);
            executor::binfmt::check(dir, &p.architecture, &host.architecture).map_err(
                |source| SolveError::Binfmt {
                    at: location(&r.opts, &r.graph.nodes[n]),
                    source: Box::new(source),
                },
            )?;
        }
        r.build(n, root, async |rootfs, _scratch| {
            let (spec, guards) = r.exec_spec(n, self, rootfs, inputs)?;
            // Taken before the sandbox starts: what the step dates is at or after this.
            let mtimes = cache::layer::writer::StepMtimes::starting_now(r.opts.epoch);
            Ok((spec, LayerMtimes::Step(mtimes), guards))
        })
        .await
    }
}

impl Runner {
    pub(super) fn exec_spec(
        &self,
        n: NodeId,
        x: &ExecOp,
        rootfs: Rootfs,
        inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<(InitSpec, RunGuards), SolveError> {
        let at = || location(&self.opts, &self.graph.nodes[n]);
        let lowers = |m: NodeId| {
            self.lowers(
                &inputs
                    .get(&m)
                    .expect("the scheduler passes every input")
                    .chain,
            )
        };
        let ignore = Ignore::parse(&self.opts.dockerignore);
        let cx = crate::mounts::MountContext {
            store: &self.store,
            context: &self.opts.context,
            secrets: &self.opts.secrets,
            ssh: &self.opts.ssh,
            ignore: &ignore,
            lowers: &lowers,
        };
        // A sharing=locked cache mount blocks on its flock: let the runtime move its other
        // tasks (the lock holder's sandbox among them) off this worker meanwhile.
        let prepare = || crate::mounts::prepare(&cx, &x.mounts);
        let prepared = cache::blocking::in_place(prepare)
            .map_err(|source| SolveError::Mount { at: at(), source })?;
        let mounts = prepared.mounts;
        let (network, lease) = match (x.network, self.opts.network, &self.opts.bridge) {
            (NetworkMode::Host, _, _) | (NetworkMode::Default, NetworkMode::Host, _) => {
                (Network::Host, None)
            }
            (NetworkMode::Default, NetworkMode::Default, Some(bridge)) => {
                // Usually instant (a pooled namespace); may wait for a free slot.
                let acquire = || bridge.acquire();
                let lease =
                    cache::blocking::in_place(acquire).map_err(|source| SolveError::Network {
                        at: at(),
                        source: Box::new(source),
                    })?;
                (lease.network("kiln"), Some(lease))
            }
            _ => (Network::Loopback, None),
        };
        let mut env = x.env.clone();
        env.extend(x.proxy_env.iter().cloned());
        env.extend(prepared.env);
        let spec = InitSpec::Run(RunSpec {
            rootfs,
            args: x.args.clone(),
            env,
            cwd: x.cwd.clone(),
            user: x.user.clone(),
            hostname: "kiln".to_owned(),
            network,
            mounts,
            tty: false,
            security: executor::spec::Security {
                privileged: x.insecure,
                ..self.opts.security.clone()
            },
        });
        Ok((spec, (prepared.guards, lease)))
    }
}
