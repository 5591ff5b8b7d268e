//! aspen-operator: the `AspenCluster` custom resource and the controller that
//! turns it into StatefulSets, Services and a healthy Raft membership; and
//! local mode, which runs the same resource as processes on one machine.

pub mod controller;
pub mod crd;
pub mod http;
pub mod local;
pub mod membership;
pub mod metrics;
pub mod nodes;
pub mod observe;
pub mod quantity;
pub mod resources;
pub mod status;
pub mod telemetry;
