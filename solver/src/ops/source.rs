//! Source ops: a base filesystem is the layer chain of a stored image, or nothing (scratch).

use super::runner::Runner;
use super::{NodeResult, SolveError, SolveOp, location};
use crate::graph::{NodeId, SourceOp};
use cache::oci::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;

impl SolveOp for SourceOp {
    /// The key without a platform (`ops::cache_map` adds the node's).
    fn cache_map(&self, _keys: &[Option<Digest>], _contents: &[Option<Digest>]) -> Digest {
        crate::key::source_key(self, None)
    }

    async fn exec(
        &self,
        r: &Runner,
        n: NodeId,
        _root: Option<&NodeResult>,
        _inputs: &BTreeMap<NodeId, Arc<NodeResult>>,
    ) -> Result<NodeResult, SolveError> {
        r.source(n, self)
    }
}

impl Runner {
    pub(super) fn source(&self, n: NodeId, op: &SourceOp) -> Result<NodeResult, SolveError> {
        let at = || location(&self.opts, &self.graph.nodes[n]);
        match op {
            SourceOp::Scratch => Ok(NodeResult {
                chain: vec![],
                made_layer: false,
            }),
            SourceOp::Image { manifest, .. } => {
                let image = self
                    .store
                    .image(manifest)
                    .map_err(|source| SolveError::Store {
                        at: at(),
                        source: Box::new(source),
                    })?;
                let chain = image.config.rootfs.diff_ids.clone();
                if let Some(d) = chain.iter().find(|d| !self.store.has_layer(d)) {
                    return Err(SolveError::MissingLayer {
                        at: at(),
                        diff_id: d.clone(),
                    });
                }
                Ok(NodeResult {
                    chain,
                    made_layer: false,
                })
            }
        }
    }
}
