//! One topology version across several processes, with timely's own cluster mode: the layout (who
//! is where) and which process owns a user.

use std::path::{Path, PathBuf};

/// This process's place in a version's cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    /// This process's index, `0..addresses.len()`.
    pub process: usize,
    /// Every process's timely address (`host:port`), in process order.
    pub addresses: Vec<String>,
    /// Every process's HTTP address, when the hostfile names them (queries are forwarded there).
    pub http: Vec<Option<String>>,
}

impl Cluster {
    /// Reads a hostfile: one line per process, `<timely host:port> [<http host:port>]`; blank
    /// lines and `#` comments are ignored. `processes` must match the number of lines.
    pub fn from_hostfile(path: &Path, processes: usize, process: usize) -> Result<Cluster, HostfileError> {
        let error = |problem| HostfileError { path: path.to_owned(), problem };
        let text = std::fs::read_to_string(path).map_err(|e| error(HostfileProblem::Read(e)))?;
        Cluster::parse(&text, processes, process).map_err(error)
    }

    /// Parses hostfile text.
    pub fn parse(text: &str, processes: usize, process: usize) -> Result<Cluster, HostfileProblem> {
        let mut addresses = Vec::new();
        let mut http = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let timely = fields.next().unwrap_or_default();
            if !valid_addr(timely) {
                return Err(HostfileProblem::Address { line: n + 1, address: timely.to_owned() });
            }
            let web = fields.next();
            if let Some(w) = web
                && !valid_addr(w)
            {
                return Err(HostfileProblem::HttpAddress { line: n + 1, address: w.to_owned() });
            }
            if fields.next().is_some() {
                return Err(HostfileProblem::Fields { line: n + 1 });
            }
            addresses.push(timely.to_owned());
            http.push(web.map(str::to_owned));
        }
        if addresses.len() != processes {
            return Err(HostfileProblem::Processes { listed: addresses.len(), processes });
        }
        if process >= processes {
            return Err(HostfileProblem::Process { process, processes });
        }
        Ok(Cluster { process, addresses, http })
    }

    /// Processes in the cluster.
    pub fn processes(&self) -> usize {
        self.addresses.len()
    }

    /// The process whose workers own `user_id`, with `workers` threads per process.
    pub fn owner(&self, user_id: &str, workers: usize) -> usize {
        owner_process(user_id, workers, self.processes())
    }
}

/// The process whose workers own `user_id`: timely numbers workers process by process, and
/// events are exchanged to the owner [`squall_operators::key_groups::owner`] names.
pub fn owner_process(user_id: &str, workers: usize, processes: usize) -> usize {
    squall_operators::key_groups::owner(user_id, workers * processes) / workers
}

fn valid_addr(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A hostfile that cannot be used: `--hostfile <path>: <problem>`.
#[derive(Debug, thiserror::Error)]
#[error("--hostfile {}: {problem}", path.display())]
pub struct HostfileError {
    /// The hostfile.
    pub path: PathBuf,
    /// What is wrong with it (part of the message, so not repeated as a cause).
    pub problem: HostfileProblem,
}

/// What is wrong with a hostfile's text, or reading it.
#[derive(Debug, thiserror::Error)]
pub enum HostfileProblem {
    /// It cannot be read.
    #[error("{0}")]
    Read(std::io::Error),
    /// A line's timely address is not `host:port`.
    #[error("line {line}: {address:?} is not host:port")]
    Address {
        /// The line, from 1.
        line: usize,
        /// What it holds instead.
        address: String,
    },
    /// A line's HTTP address is not `host:port`.
    #[error("line {line}: HTTP address {address:?} is not host:port")]
    HttpAddress {
        /// The line, from 1.
        line: usize,
        /// What it holds instead.
        address: String,
    },
    /// A line has more than two fields.
    #[error("line {line}: expected `<timely host:port> [<http host:port>]`")]
    Fields {
        /// The line, from 1.
        line: usize,
    },
    /// It lists another number of processes than `--processes`.
    #[error("{listed} processes listed, --processes {processes}")]
    Processes {
        /// Processes listed.
        listed: usize,
        /// `--processes`.
        processes: usize,
    },
    /// `--process` is not one of them.
    #[error("--process {process}: use 0..{processes}")]
    Process {
        /// `--process`.
        process: usize,
        /// `--processes`.
        processes: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hostfiles_and_names_mistakes() {
        let c = Cluster::parse("# two\n127.0.0.1:2101 127.0.0.1:8081\n\n127.0.0.1:2102\n", 2, 1).unwrap();
        assert_eq!(c.addresses, vec!["127.0.0.1:2101", "127.0.0.1:2102"]);
        assert_eq!(c.http, vec![Some("127.0.0.1:8081".into()), None]);
        assert_eq!(c.process, 1);
        assert!(Cluster::parse("a:1\n", 2, 0).unwrap_err().to_string().contains("1 processes listed, --processes 2"));
        assert!(Cluster::parse("a:1\nb:2\n", 2, 2).unwrap_err().to_string().contains("--process 2"));
        assert!(Cluster::parse("a:1\nb\n", 2, 0).unwrap_err().to_string().contains("line 2"));
        assert!(Cluster::parse("a:1 b:x\n", 1, 0).unwrap_err().to_string().contains("HTTP address"));
        assert!(Cluster::parse("a:1 b:2 c:3\n", 1, 0).unwrap_err().to_string().contains("expected"));
    }

    #[test]
    fn owners_follow_timely_worker_numbering() {
        // With 2 processes x 2 workers, worker w lives in process w / 2.
        for user in ["u1", "u2", "alice", "bob", "carol"] {
            let worker = squall_operators::key_groups::owner(user, 4);
            assert_eq!(owner_process(user, 2, 2), worker / 2);
        }
        assert_eq!(owner_process("anyone", 4, 1), 0);
    }
}
