//! Starting timely's workers, alone or as one process of a cluster whose connections this module
//! makes itself.
//!
//! timely's own `create_sockets` retries a refused connection once a second and polls for the
//! connections it awaits once a second, so a process that starts a few milliseconds before its
//! peers waits up to a second for them (a standby cluster's takeover took 1.25 s in the first run
//! of `tests/standby.rs`, against 0.26 s for its peer). These are the same connections with the
//! same handshake (each connecting process sends its index as a big-endian `u64` to the
//! processes before it, which listen on their address), retried and polled every few
//! milliseconds; timely then runs over them as over its own (`initialize_networking_from_sockets`).
//! Like timely, it waits for every peer as long as it takes.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use timely::WorkerConfig;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, WorkerGuards};
use timely::worker::Worker;

use crate::version::cluster::Cluster;

/// How long a connection that was refused waits before it is tried again, and how long a process
/// waits between two looks for the connections it awaits.
const RETRY: Duration = Duration::from_millis(5);

/// Runs `func` on `workers` threads of this process: alone, or as process `cluster.process` of
/// the cluster (returning once every process has connected).
pub fn execute<T, F>(workers: usize, cluster: Option<&Cluster>, func: F) -> Result<WorkerGuards<T>, String>
where
    T: Send + 'static,
    F: Fn(&mut Worker) -> T + Send + Sync + 'static,
{
    let Some(c) = cluster else { return timely::execute(timely::Config::process(workers), func) };
    let sockets = sockets(&c.addresses, c.process).map_err(|e| format!("cannot connect the cluster: {e}"))?;
    let hooks = Hooks::default();
    let local = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(local, sockets, c.process, workers, hooks)
        .map_err(|e| format!("cannot start the cluster's network threads: {e}"))?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    timely::execute::execute_from(builders, Box::new(guard), WorkerConfig::default(), func)
}

/// A connection to every other process of the cluster, in process order (`None` at `me`): to the
/// processes before `me` by connecting, from those after it by accepting on `addresses[me]`.
pub fn sockets(addresses: &[String], me: usize) -> io::Result<Vec<Option<TcpStream>>> {
    let listener = TcpListener::bind(&addresses[me])?;
    listener.set_nonblocking(true)?;
    let before = addresses[..me].to_vec();
    let connecting = std::thread::Builder::new()
        .name("squall:connect".into())
        .spawn(move || before.iter().map(|address| connect(address, me).map(Some)).collect::<io::Result<Vec<_>>>())?;
    let mut after: Vec<Option<TcpStream>> = (me + 1..addresses.len()).map(|_| None).collect();
    while after.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                let mut index = [0u8; 8];
                stream.read_exact(&mut index)?;
                let index = u64::from_be_bytes(index) as usize;
                let slot = index.checked_sub(me + 1).and_then(|i| after.get_mut(i)).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("a peer says it is process {index}"))
                })?;
                *slot = Some(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(RETRY),
            Err(e) => return Err(e),
        }
    }
    let mut all = connecting.join().map_err(|_| io::Error::other("the connecting thread panicked"))??;
    all.push(None);
    all.extend(after);
    Ok(all)
}

/// A connection to the process listening at `address`, once it accepts, that has been told this
/// process is `me`.
fn connect(address: &str, me: usize) -> io::Result<TcpStream> {
    let mut refused = 0u64;
    loop {
        match TcpStream::connect(address) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                stream.write_all(&(me as u64).to_be_bytes())?;
                return Ok(stream);
            }
            Err(e) => {
                // Said once a second, as timely does each time.
                if refused.is_multiple_of(200) {
                    tracing::info!(process = me, %address, error = %e, "cluster: waiting for a peer");
                }
                refused += 1;
                std::thread::sleep(RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three processes on loopback, started in reverse order with gaps, are connected in well
    /// under timely's one-second polls, each socket to the right peer.
    #[test]
    fn processes_started_apart_connect_at_once_each_to_the_right_peer() {
        let ports: Vec<u16> =
            (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let started = std::time::Instant::now();
        let handles: Vec<_> = (0..3)
            .rev()
            .map(|me| {
                let addresses = addresses.clone();
                std::thread::sleep(Duration::from_millis(30));
                std::thread::spawn(move || sockets(&addresses, me).unwrap())
            })
            .collect();
        let mut all: Vec<Vec<Option<TcpStream>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        all.reverse();
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        // Each process writes its index on every socket; each peer reads it on the socket it holds
        // for that process.
        for (me, socks) in all.iter_mut().enumerate() {
            assert!(socks[me].is_none());
            for s in socks.iter_mut().flatten() {
                s.write_all(&[me as u8]).unwrap();
            }
        }
        for (me, socks) in all.iter_mut().enumerate() {
            for (peer, s) in socks.iter_mut().enumerate() {
                if let Some(s) = s {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).unwrap();
                    assert_eq!(b[0] as usize, peer, "process {me}'s socket {peer}");
                }
            }
        }
    }
}
