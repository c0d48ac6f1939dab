//! Decides a packet against a [`Plan`]: dispatch by address to the pod
//! chain, walk its policies in order, accept on the first matching line,
//! drop at the end of an isolated pod's chain. The rendered ruleset merges a
//! pod's policies into one allow-list and so decides the same (held by
//! tests/proptest_plan.rs with `nft::eval`); this walk also says which line
//! of which policy allowed. Used by `explain` and by the tests that hold the
//! plan against the reference evaluator.

use std::net::IpAddr;

use super::plan::{Match, Plan, PolicyId, PortMatch};
use super::policy::Direction;
use super::snapshot::{ObjectKey, Protocol};

/// The outcome of one direction's check on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The address is not an isolated local pod in this direction.
    Open,
    /// Accepted by this line of this policy.
    Allowed { policy: ObjectKey, rule: usize },
    /// Isolated by these policies, and no line matched.
    Denied { isolated_by: Vec<ObjectKey> },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

impl Plan {
    /// One direction's check of a new connection `src → dst` on this node.
    pub fn decide(
        &self,
        direction: Direction,
        src: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        port: u16,
    ) -> Decision {
        let (own, peer) = match direction {
            Direction::Ingress => (dst, src),
            Direction::Egress => (src, dst),
        };
        let Some(chain) = self.pod_chain(direction, own) else {
            return Decision::Open;
        };
        for policy in &chain.policies {
            let id = PolicyId {
                policy: policy.clone(),
                direction,
            };
            let Some(pc) = self.policies.get(&id) else {
                continue;
            };
            if let Some(m) = pc
                .matches
                .iter()
                .find(|m| self.line_matches(m, peer, dst, proto, port))
            {
                return Decision::Allowed {
                    policy: policy.clone(),
                    rule: m.rule,
                };
            }
        }
        Decision::Denied {
            isolated_by: chain.policies.clone(),
        }
    }

    fn line_matches(
        &self,
        m: &Match,
        peer: IpAddr,
        dst: IpAddr,
        proto: Protocol,
        port: u16,
    ) -> bool {
        let peer_ok = match &m.peer {
            None => true,
            Some(id) => self.addr_sets.get(id).is_some_and(|s| s.contains(peer)),
        };
        peer_ok
            && match &m.ports {
                PortMatch::Any => true,
                PortMatch::Proto(p) => *p == proto,
                PortMatch::Ports(p, ranges) => {
                    *p == proto && ranges.iter().any(|(s, e)| *s <= port && port <= *e)
                }
                PortMatch::Named(id) => self
                    .port_sets
                    .get(id)
                    .is_some_and(|s| s.elements.contains(&(dst, proto, port))),
            }
    }

    /// Whether this node lets a new connection `src → dst` through: the
    /// egress check of a local source and the ingress check of a local
    /// destination, as the forward hook applies them.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        Direction::BOTH
            .iter()
            .all(|d| self.decide(*d, src, dst, proto, port).is_allowed())
    }
}
