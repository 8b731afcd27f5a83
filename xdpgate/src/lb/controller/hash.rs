//! The flow hash of the installed services (`SERVICE_HASH_FAST`): which one
//! each service uses, and the operator's switch from one to the other.
use xdpgate_common::lb::{FlowHash, ServiceInfo};
use xdpgate_model::lb::{ServiceId, service_key};

use super::{LbController, LbError};
use crate::datapath::{DatapathError, LbMaps};

impl LbController {
    /// Switches every service, and the services added from now on, to flow
    /// hash `kind`: the operator's one-time remap (docs/design/lb.md,
    /// "Hashes"). Each service whose hash differs gets its entry rewritten
    /// with the new hash's flag and nothing else changed (same ring half, so
    /// one atomic entry update per service); most of its flows then move to
    /// other backends, as after a change of its backends. All or nothing: if
    /// a write fails, the entries already switched are written back. Returns
    /// how many services switched.
    pub fn set_flow_hash<D: LbMaps + ?Sized>(
        &mut self,
        dp: &mut D,
        kind: FlowHash,
    ) -> Result<usize, LbError> {
        let mut switched: Vec<ServiceId> = Vec::new();
        let ids: Vec<ServiceId> = self
            .services
            .iter()
            .filter(|(_, i)| i.hash != kind)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            let inst = &self.services[id];
            let info = ServiceInfo {
                flags: (inst.info.flags & !inst.hash.flag()) | kind.flag(),
                ..inst.info
            };
            if let Err(e) = dp.set_service(&service_key(id), &info) {
                let undo: Vec<DatapathError> = switched
                    .iter()
                    .filter_map(|id| {
                        dp.set_service(&service_key(id), &self.services[id].info)
                            .err()
                    })
                    .collect();
                return Err(if undo.is_empty() {
                    e.into()
                } else {
                    LbError::Rollback {
                        cause: Box::new(e.into()),
                        undo,
                    }
                });
            }
            switched.push(*id);
        }
        for id in &ids {
            let inst = self.services.get_mut(id).expect("listed above");
            inst.info.flags = (inst.info.flags & !inst.hash.flag()) | kind.flag();
            inst.hash = kind;
        }
        self.hash = kind;
        Ok(ids.len())
    }

    /// The flow hash of service `id` (`None`: no such service).
    pub fn flow_hash(&self, id: &ServiceId) -> Option<FlowHash> {
        self.services.get(id).map(|i| i.hash)
    }
}
