//! aspen-operator: the `AspenCluster` custom resource and the controller that
//! turns it into StatefulSets, Services and a healthy Raft membership.

pub mod controller;
pub mod crd;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod nodes;
pub mod observe;
pub mod quantity;
pub mod resources;
pub mod status;
pub mod telemetry;
