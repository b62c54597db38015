//! Source ops: a base filesystem is the layer chain of a stored image, or nothing (scratch).

use super::runner::Runner;
use super::{NodeResult, SolveError, location};
use crate::graph::{NodeId, SourceOp};

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
