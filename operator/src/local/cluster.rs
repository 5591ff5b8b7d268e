//! The running local cluster: one step observes the processes, data
//! directories and nodes, asks the planner for one action, records it in the
//! state file, and executes it against processes.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::manifest;
use super::process::{NodeSettings, Supervisor};
use super::report::{LocalNode, LocalStatus, Reporter, STATUS_FILE, describe};
use super::state::{DirLock, Loopback, State, port_is_free};
use super::{LocalError, Options, io_error, node_binary};
use crate::crd::AspenCluster;
use crate::membership::{self, Action, CAUGHT_UP_MAX_LAG, NodeView, Observed, Ordinal, Plan};
use crate::nodes::{self, HttpNodeAdmin, NodeAddresses};
use crate::observe::Observation;
use crate::resources::Names;
use crate::status;

/// Timeout of each membership call; status calls use less.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// A wait that needs attention is logged as a warning once it lasts this long.
const WARN_AFTER: Duration = Duration::from_secs(10);

/// One running local mode.
#[derive(Debug)]
pub struct Local {
    dir: PathBuf,
    _lock: DirLock,
    manifest: manifest::Watched,
    /// The manifest's cluster, with the status of the last step.
    cluster: AspenCluster,
    settings: NodeSettings,
    state: State,
    supervisor: Supervisor,
    admin: HttpNodeAdmin,
    /// What the last steps planned, in a word, to log changes only; since
    /// when; and whether a wait that needs attention was warned about.
    headline: String,
    headline_since: Instant,
    warned: bool,
    reporter: Reporter,
}

impl Local {
    pub fn start(options: Options) -> Result<Self, LocalError> {
        let (manifest, cluster) = manifest::Watched::open(&options.manifest)?;
        let settings =
            NodeSettings::of(&cluster, options.storage).map_err(|e| LocalError::Manifest {
                path: options.manifest.clone(),
                message: e.to_string(),
            })?;
        let names = settings.names.clone();
        let dir = options
            .data_dir
            .unwrap_or_else(|| Path::new("aspen-local").join(&names.cluster));
        std::fs::create_dir_all(&dir).map_err(io_error(format!(
            "creating the data directory {}",
            dir.display()
        )))?;
        let lock = DirLock::acquire(&dir)?;
        let binary = node_binary(options.node_bin)?;
        let state = State::open(&dir, names.cluster_id(), options.storage)?;
        let supervisor = Supervisor::new(binary.clone(), dir.clone());
        check_ports_free(&state, &supervisor, &names, &dir)?;
        tracing::info!(
            cluster = %names.cluster_id(),
            manifest = %manifest.path().display(),
            data_dir = %dir.display(),
            node_bin = %binary.display(),
            storage = %options.storage,
            resumed = state.bootstrapped,
            "local mode started"
        );
        Ok(Local {
            dir: dir.clone(),
            _lock: lock,
            manifest,
            cluster,
            settings,
            state,
            supervisor,
            admin: HttpNodeAdmin::new(NODE_TIMEOUT),
            headline: String::new(),
            headline_since: Instant::now(),
            warned: false,
            reporter: Reporter::new(dir),
        })
    }

    fn names(&self) -> &Names {
        &self.settings.names
    }

    fn save(&self) -> Result<(), LocalError> {
        self.state.save(&self.dir)
    }

    /// One round: notice exits and manifest changes, start what should run,
    /// observe, plan one action, record it, execute it, report.
    pub async fn step(&mut self) -> Result<(), LocalError> {
        if let Some(cluster) = self.manifest.poll() {
            self.take_manifest(cluster);
        }
        let names = self.names().clone();
        self.supervisor.reap(&names, self.state.replicas);
        self.run_processes()?;
        let observation = self.observe().await;
        let plan = membership::plan(&observation.observed);
        self.log_plan(&plan);
        let now = Time(Timestamp::now());
        let record = self.state.record();
        if plan.record != record {
            if let Some(old) = record
                .operation
                .filter(|op| plan.record.operation != Some(*op))
            {
                if old.is_done(&observation.observed) {
                    tracing::info!(operation = %old, "operation completed");
                } else {
                    tracing::warn!(operation = %old, "operation abandoned: no longer needed or no longer possible");
                }
            }
            // Written before the action runs, so that a local mode that is
            // killed mid-change knows what may be in flight.
            self.state.set_record(plan.record, &now);
            self.save()?;
        }
        let failure = self.execute(&observation, &plan).await?;
        self.report(&observation, &plan, failure.as_deref(), &now);
        Ok(())
    }

    /// A changed manifest: its replicas take effect at once, other settings
    /// for nodes started from now on. Another cluster name is refused.
    fn take_manifest(&mut self, cluster: AspenCluster) {
        let names = Names::of(&cluster);
        if names != *self.names() {
            tracing::error!(
                running = %self.names().cluster_id(),
                manifest = %names.cluster_id(),
                "the manifest now names another cluster; restart local mode to run it"
            );
            return;
        }
        let settings = match NodeSettings::of(&cluster, self.settings.storage) {
            Ok(settings) => settings,
            Err(error) => {
                tracing::error!(%error, "the changed manifest is invalid; keeping the last one");
                return;
            }
        };
        if cluster.spec.replicas != self.cluster.spec.replicas {
            tracing::info!(
                from = self.cluster.spec.replicas,
                to = cluster.spec.replicas,
                "manifest changed: scaling"
            );
        }
        if settings != self.settings {
            tracing::warn!("manifest changed: node settings apply to nodes started from now on");
        }
        self.settings = settings;
        let status = self.cluster.status.take();
        self.cluster = AspenCluster { status, ..cluster };
    }

    /// Stop the processes above the replicas and start those due below.
    /// A node that starts on an empty data directory gets new ports: only a
    /// member's addresses must stay the same.
    fn run_processes(&mut self) -> Result<(), LocalError> {
        let names = self.names().clone();
        self.supervisor.stop_from(&names, self.state.replicas);
        for ordinal in self.supervisor.due(self.state.replicas) {
            let has_data = self.supervisor.data_dir(&names, ordinal).exists();
            let ports = match self.state.ports.get(&ordinal) {
                Some(ports) if has_data => *ports,
                _ => {
                    let ports = self
                        .state
                        .allocate_ports(ordinal)
                        .map_err(io_error(format!(
                            "finding free ports for {}",
                            names.pod(ordinal)
                        )))?;
                    self.save()?;
                    ports
                }
            };
            self.supervisor.start(&self.settings, ordinal, ports);
        }
        Ok(())
    }

    /// What the planner looks at, as the controller's `observe` builds it
    /// from pods and PVCs.
    async fn observe(&self) -> Observation {
        let pods = self.supervisor.pods();
        let running: Vec<Ordinal> = pods
            .iter()
            .filter(|(_, pod)| pod.running)
            .map(|(ordinal, _)| *ordinal)
            .collect();
        let statuses = nodes::statuses(&self.admin, &Loopback(&self.state.ports), running).await;
        let mut observed = Observed {
            desired_replicas: self
                .cluster
                .spec
                .desired_replicas()
                .expect("the manifest was validated when read"),
            statefulset_replicas: self.state.replicas,
            pods,
            nodes: statuses.iter().map(|(o, s)| (*o, nodes::view(s))).collect(),
            volumes: self.volumes(),
            when_scaled: self.cluster.spec.pvc_retention.when_scaled.into(),
            record: self.state.record(),
        };
        let ready: Vec<Ordinal> = observed
            .nodes
            .iter()
            .filter(|(_, node)| is_ready(node, membership::leader(&observed)))
            .map(|(ordinal, _)| *ordinal)
            .collect();
        for ordinal in ready {
            if let Some(pod) = observed.pods.get_mut(&ordinal) {
                pod.ready = true;
            }
        }
        Observation { observed, statuses }
    }

    /// Ordinals whose data directory exists.
    fn volumes(&self) -> BTreeSet<Ordinal> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| self.names().pod_ordinal(entry.file_name().to_str()?))
            .collect()
    }

    /// Log what the planner wants when it changes. A wait that needs
    /// attention (no leader, say) is normal for a moment after nodes start,
    /// so it becomes a warning only when it lasts.
    fn log_plan(&mut self, plan: &Plan) {
        let headline = match &plan.action {
            Action::Wait(wait) => wait.reason().to_owned(),
            action => describe(action, self.names()),
        };
        let next = describe(&plan.action, self.names());
        if headline != self.headline {
            tracing::info!(%next, "planned");
            self.headline = headline;
            self.headline_since = Instant::now();
            self.warned = false;
        } else if let Action::Wait(wait) = &plan.action
            && wait.is_degraded()
            && !self.warned
            && self.headline_since.elapsed() >= WARN_AFTER
        {
            let waited_s = self.headline_since.elapsed().as_secs();
            tracing::warn!(%next, waited_s, "still waiting");
            self.warned = true;
        }
    }

    /// Execute the planned action; the error text when it failed (the
    /// action is planned again next step).
    async fn execute(
        &mut self,
        observation: &Observation,
        plan: &Plan,
    ) -> Result<Option<String>, LocalError> {
        match plan.action {
            Action::Membership(op) => {
                let addresses = Loopback(&self.state.ports);
                match nodes::change_membership(&self.admin, &addresses, &observation.observed, op)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(operation = %op, "membership changed");
                        Ok(None)
                    }
                    Err(error) => {
                        tracing::warn!(operation = %op, %error, "membership change failed");
                        Ok(Some(format!("{op}: {error}")))
                    }
                }
            }
            Action::ScaleStatefulSet { replicas } => {
                tracing::info!(
                    from = self.state.replicas,
                    to = replicas,
                    "scaling node processes"
                );
                self.state.replicas = replicas;
                self.save()?;
                self.run_processes()?;
                Ok(None)
            }
            Action::DeleteVolume { ordinal, why } => {
                let dir = self.supervisor.data_dir(self.names(), ordinal);
                match std::fs::remove_dir_all(&dir) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        let message = format!("wiping {}: {error}", dir.display());
                        tracing::warn!(%message, "could not wipe data");
                        Ok(Some(message))
                    }
                    _ => {
                        tracing::info!(data_dir = %dir.display(), ?why, "wiped the data of a former member");
                        if self.state.ports.remove(&ordinal).is_some() {
                            self.save()?;
                        }
                        Ok(None)
                    }
                }
            }
            Action::Wait(_) | Action::Converged => Ok(None),
        }
    }

    /// Report the step: status.json, the endpoints file, the table.
    fn report(
        &mut self,
        observation: &Observation,
        plan: &Plan,
        failure: Option<&str>,
        now: &Time,
    ) {
        let status = status::build(&self.cluster, observation, plan, failure, now);
        self.cluster.status = Some(status.clone());
        let local = LocalStatus {
            cluster_id: self.names().cluster_id(),
            desired_replicas: observation.observed.desired_replicas,
            replicas: self.state.replicas,
            next_action: describe(&plan.action, self.names()),
            converged: plan.action == Action::Converged,
            status,
            nodes: self.node_rows(&observation.observed.volumes),
        };
        self.reporter.report(local);
    }

    /// One row per ordinal that runs, should run, or has ports or data.
    fn node_rows(&self, volumes: &BTreeSet<Ordinal>) -> Vec<LocalNode> {
        let names = self.names();
        let ordinals: BTreeSet<Ordinal> = (0..self.state.replicas)
            .chain(self.supervisor.ordinals())
            .chain(self.state.ports.keys().copied())
            .chain(volumes.iter().copied())
            .collect();
        let addresses = Loopback(&self.state.ports);
        ordinals
            .into_iter()
            .map(|ordinal| {
                let (process, pid, restarts) = self.supervisor.process(ordinal);
                let has_ports = self.state.ports.contains_key(&ordinal);
                LocalNode {
                    name: names.pod(ordinal),
                    ordinal,
                    node_id: membership::node_id_of(ordinal),
                    client_address: has_ports.then(|| addresses.client_address(ordinal)),
                    peer_address: has_ports.then(|| addresses.peer_address(ordinal)),
                    data_dir: self.supervisor.data_dir(names, ordinal),
                    log_file: self.supervisor.log_file(names, ordinal),
                    process,
                    pid,
                    restarts,
                }
            })
            .collect()
    }

    /// Stop every node gracefully, then say so in status.json.
    pub async fn stop(&mut self) {
        let names = self.names().clone();
        self.supervisor.stop_all(&names).await;
        self.reporter.stopped();
        tracing::info!("local mode stopped");
    }
}

/// Refuse to start while a port of a node with data is taken: most likely
/// by that node itself, left running by a local mode killed alone.
fn check_ports_free(
    state: &State,
    supervisor: &Supervisor,
    names: &Names,
    dir: &Path,
) -> Result<(), LocalError> {
    for ordinal in 0..state.replicas {
        let Some(ports) = state.ports.get(&ordinal) else {
            continue;
        };
        if !supervisor.data_dir(names, ordinal).exists() {
            continue;
        }
        if let Some(port) = [ports.client, ports.peer]
            .into_iter()
            .find(|p| !port_is_free(*p))
        {
            return Err(LocalError::PortInUse {
                node: names.pod(ordinal),
                port,
                status: dir.join(STATUS_FILE),
            });
        }
    }
    Ok(())
}

/// Ready as a pod's readiness probe would say: a member that follows the
/// leader and has caught up with it.
fn is_ready(node: &NodeView, leader: Option<&NodeView>) -> bool {
    let Some(leader) = leader else {
        return false;
    };
    node.initialized
        && !node.removed
        && (node.node_id == leader.node_id
            || (node.leader_id == Some(leader.node_id)
                && leader
                    .lag
                    .get(&node.node_id)
                    .is_some_and(|lag| *lag <= CAUGHT_UP_MAX_LAG)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::membership::{Membership, Role};

    fn view(node_id: u64, role: Role, leader_id: Option<u64>) -> NodeView {
        NodeView {
            node_id,
            role,
            term: 2,
            leader_id,
            initialized: true,
            removed: false,
            membership: Membership::default(),
            committed_index: Some(10),
            lag: BTreeMap::new(),
        }
    }

    #[test]
    fn a_node_is_ready_when_it_follows_the_leader_and_caught_up() {
        let mut leader = view(1, Role::Leader, Some(1));
        leader.lag = BTreeMap::from([(2, 0), (3, CAUGHT_UP_MAX_LAG + 1)]);
        assert!(is_ready(&leader, Some(&leader)));
        assert!(is_ready(&view(2, Role::Follower, Some(1)), Some(&leader)));
        assert!(
            !is_ready(&view(3, Role::Learner, Some(1)), Some(&leader)),
            "behind"
        );
        assert!(
            !is_ready(&view(2, Role::Follower, None), Some(&leader)),
            "no leader known"
        );
        assert!(!is_ready(&view(2, Role::Follower, Some(1)), None));
        let mut removed = view(2, Role::Follower, Some(1));
        removed.removed = true;
        assert!(!is_ready(&removed, Some(&leader)));
    }
}
