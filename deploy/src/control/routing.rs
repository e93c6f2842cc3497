//! Which process answers which query. The answer comes from [`Routes`], an immutable snapshot of
//! the registry and of the addresses of every serving deployment, replaced whole whenever either
//! changes and read without a lock, so that no query waits on a registry write or a Kafka call.
//! The snapshot is derived: the registry and the observations stay the only sources.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::registry::{Desired, RegistryData};
use crate::values::GroupId;

/// The snapshot queries are routed by.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    registry: Arc<RegistryData>,
    serving: HashMap<GroupId, Arc<[String]>>,
    /// The process ids of the serving processes, where the server knows them (its own host's).
    pids: HashMap<GroupId, Arc<[Option<u32>]>>,
    /// Per version, per process: the addresses of its standbys that may answer (serving, within
    /// `runtime.standby_max_lag` cuts of the replica feed).
    standbys: HashMap<GroupId, Arc<[Vec<String>]>>,
}

/// Where a query goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The version that answers.
    pub group_id: GroupId,
    /// The HTTP address of the process that owns the user (its standby's while it is down).
    pub url: String,
    /// A standby of that process to ask at once if `url` cannot be reached.
    pub standby: Option<String>,
    /// The process id of the process at `url`, when the server knows it.
    pub pid: Option<u32>,
}

/// Why a query cannot be routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// `?topology=` names a deployed topology without a promoted version.
    NotPromoted(String),
    /// `?topology=` names a topology no deployment has.
    UnknownTopology(String),
    /// No topology has a promoted version.
    NonePromoted,
    /// Several topologies have one, and the query did not say which.
    SeveralPromoted,
    /// No deployment has this group id.
    Unknown(GroupId),
    /// The version is stopped or not every process of it serves.
    NotServing(GroupId),
}

impl Routes {
    /// The registry as last committed.
    pub fn registry(&self) -> &RegistryData {
        &self.registry
    }

    /// The addresses of `g`'s processes, in process order, when every one of them serves.
    pub fn serving(&self, g: &GroupId) -> Option<&[String]> {
        self.serving.get(g).map(|u| &u[..])
    }

    /// The process that answers for `user_id`: of version `group` if given, else of the promoted
    /// version of `topology`, else of the only promoted version.
    pub fn route(&self, group: Option<&GroupId>, topology: Option<&str>, user_id: &str) -> Result<Route, RouteError> {
        let group = match (group, topology) {
            (Some(g), _) => g,
            (None, Some(t)) => self.registry.promoted(t).ok_or_else(|| {
                if self.registry.deployments.values().any(|d| d.topology == t) {
                    RouteError::NotPromoted(t.to_owned())
                } else {
                    RouteError::UnknownTopology(t.to_owned())
                }
            })?,
            (None, None) => match self.registry.promoted.values().collect::<Vec<_>>().as_slice() {
                [one] => *one,
                [] => return Err(RouteError::NonePromoted),
                _ => return Err(RouteError::SeveralPromoted),
            },
        };
        let d = self.registry.deployments.get(group).ok_or_else(|| RouteError::Unknown(group.clone()))?;
        let not_serving = || RouteError::NotServing(group.clone());
        if d.desired != Desired::Running {
            return Err(not_serving());
        }
        let owner = crate::version::cluster::owner_process(user_id, d.workers, d.processes);
        let standby = self.standbys.get(group).and_then(|s| s.get(owner)).and_then(|u| u.first()).cloned();
        match self.serving(group).filter(|u| u.len() == d.processes) {
            Some(urls) => {
                let pid = self.pids.get(group).and_then(|p| p.get(owner).copied().flatten());
                Ok(Route { group_id: group.clone(), url: urls[owner].clone(), standby, pid })
            }
            // The active process is down (died, restarting): its standby answers.
            None => standby
                .map(|url| Route { group_id: group.clone(), url, standby: None, pid: None })
                .ok_or_else(not_serving),
        }
    }
}

/// The current [`Routes`], swapped atomically.
#[derive(Default)]
pub struct Routing(ArcSwap<Routes>);

impl Routing {
    /// The current snapshot.
    pub fn load(&self) -> Arc<Routes> {
        self.0.load_full()
    }

    /// Publishes a newly committed registry.
    pub fn set_registry(&self, registry: &RegistryData) {
        let registry = Arc::new(registry.clone());
        self.0.rcu(|r| Routes { registry: Arc::clone(&registry), ..(**r).clone() });
    }

    /// Publishes the standbys of `g` that may answer, per process (`None`: it has none).
    pub fn set_standbys(&self, g: &GroupId, urls: Option<Vec<Vec<String>>>) {
        let urls: Option<Arc<[Vec<String>]>> = urls.map(Into::into);
        self.0.rcu(|r| {
            let mut standbys = r.standbys.clone();
            match &urls {
                Some(u) => standbys.insert(g.clone(), Arc::clone(u)),
                None => standbys.remove(g),
            };
            Routes { standbys, ..(**r).clone() }
        });
    }

    /// Publishes whether every process of `g` serves, and where.
    pub fn set_serving(&self, g: &GroupId, urls: Option<Vec<String>>) {
        self.set_serving_at(g, urls, Vec::new());
    }

    /// Publishes whether every process of `g` serves, where, and the process ids the server knows
    /// of them (in process order; missing or `None` where not known).
    pub fn set_serving_at(&self, g: &GroupId, urls: Option<Vec<String>>, pids: Vec<Option<u32>>) {
        let urls: Option<Arc<[String]>> = urls.map(Into::into);
        let pids: Arc<[Option<u32>]> = pids.into();
        self.0.rcu(|r| {
            let (mut serving, mut known) = (r.serving.clone(), r.pids.clone());
            match &urls {
                Some(u) => {
                    serving.insert(g.clone(), Arc::clone(u));
                    known.insert(g.clone(), Arc::clone(&pids));
                }
                None => {
                    serving.remove(g);
                    known.remove(g);
                }
            };
            Routes { serving, pids: known, ..(**r).clone() }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::Deployment;

    fn g(s: &str) -> GroupId {
        s.parse().unwrap()
    }

    fn deployment(group: &str, processes: usize) -> Deployment {
        Deployment::example(group, 1, processes)
    }

    #[test]
    fn queries_go_to_the_promoted_or_named_version_and_the_process_that_owns_the_user() {
        let routing = Routing::default();
        let mut data = RegistryData::default();
        for d in [deployment("p-v1", 2), deployment("p-v2", 1), deployment("q-v1", 1)] {
            data.deployments.insert(d.group_id.clone(), d);
        }
        routing.set_registry(&data);
        let r = routing.load();
        assert_eq!(r.route(None, None, "u1"), Err(RouteError::NonePromoted));
        assert_eq!(r.route(Some(&g("x-v1")), None, "u1"), Err(RouteError::Unknown(g("x-v1"))));
        assert_eq!(r.route(Some(&g("p-v1")), None, "u1"), Err(RouteError::NotServing(g("p-v1"))));

        data.promoted.insert("p".into(), g("p-v1"));
        routing.set_registry(&data);
        routing.set_serving(&g("p-v1"), Some(vec!["http://a".into(), "http://b".into()]));
        routing.set_serving(&g("p-v2"), Some(vec!["http://c".into()]));
        let r = routing.load();
        for user in ["u1", "u2", "u3", "alice", "bob"] {
            let owner = crate::version::cluster::owner_process(user, 2, 2);
            let want =
                Route { group_id: g("p-v1"), url: ["http://a", "http://b"][owner].into(), standby: None, pid: None };
            assert_eq!(r.route(None, None, user).as_ref(), Ok(&want));
            assert_eq!(r.route(None, Some("p"), user).as_ref(), Ok(&want));
        }
        assert_eq!(r.route(Some(&g("p-v2")), None, "u1").unwrap().url, "http://c");
        assert_eq!(r.route(None, Some("q"), "u1"), Err(RouteError::NotPromoted("q".into())));
        assert_eq!(r.route(None, Some(""), "u1"), Err(RouteError::UnknownTopology("".into())));

        data.promoted.insert("q".into(), g("q-v1"));
        routing.set_registry(&data);
        assert_eq!(routing.load().route(None, None, "u1"), Err(RouteError::SeveralPromoted));
        // A stopped version does not answer, even while its processes are still exiting.
        data.deployments.get_mut(&g("p-v2")).unwrap().desired = Desired::Stopped;
        routing.set_registry(&data);
        assert_eq!(routing.load().route(Some(&g("p-v2")), None, "u1"), Err(RouteError::NotServing(g("p-v2"))));
        routing.set_serving(&g("p-v1"), None);
        assert_eq!(routing.load().route(None, Some("p"), "u1"), Err(RouteError::NotServing(g("p-v1"))));
        // The snapshot taken earlier is unchanged.
        assert_eq!(r.serving(&g("p-v1")).map(<[String]>::len), Some(2));
    }

    #[test]
    fn a_process_that_is_down_is_answered_for_by_its_standby_and_its_standby_is_the_fallback() {
        let routing = Routing::default();
        let mut data = RegistryData::default();
        let mut d = deployment("p-v1", 2);
        d.standbys = 1;
        data.deployments.insert(d.group_id.clone(), d);
        data.promoted.insert("p".into(), g("p-v1"));
        routing.set_registry(&data);
        let users = ["u1", "u2", "u3", "alice", "bob"];
        let owner = |u: &str| crate::version::cluster::owner_process(u, 2, 2);
        // No standby serves yet: a version that is down does not answer.
        assert_eq!(routing.load().route(None, None, "u1"), Err(RouteError::NotServing(g("p-v1"))));
        routing.set_standbys(&g("p-v1"), Some(vec![vec!["http://s0".into()], vec![]]));
        for u in users {
            let want = (owner(u) == 0).then(|| "http://s0".to_owned());
            let r = routing.load().route(None, None, u);
            assert_eq!(r.as_ref().ok().map(|r| r.url.clone()), want, "{u}: process 1 has no usable standby");
        }
        routing.set_serving(&g("p-v1"), Some(vec!["http://a".into(), "http://b".into()]));
        for u in users {
            let r = routing.load().route(None, None, u).unwrap();
            assert_eq!(r.url, ["http://a", "http://b"][owner(u)], "the active answers again once it serves");
            assert_eq!(r.standby.as_deref(), (owner(u) == 0).then_some("http://s0"));
        }
        data.deployments.get_mut(&g("p-v1")).unwrap().desired = Desired::Stopped;
        routing.set_registry(&data);
        routing.set_serving(&g("p-v1"), None);
        assert_eq!(routing.load().route(None, None, "u1"), Err(RouteError::NotServing(g("p-v1"))));
    }
}
