//! Accept loop and per-connection frame pump.
//!
//! Each connection has a reader (decode frame, hand it to the [`Store`], queue the encoded
//! response) and a writer task that coalesces queued responses into few socket writes. Responses
//! carry the request's stream id, so the driver can keep many requests in flight per connection.

use std::{future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::store::{Connection, Store};

/// Responses queued per connection before the reader waits for the writer.
const QUEUED_RESPONSES: usize = 1024;
/// Coalesce at most this many bytes into one write.
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, store: Arc<Store>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("shutting down");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tokio::spawn(connection(socket, peer, Arc::clone(&store)));
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn connection(socket: TcpStream, peer: SocketAddr, store: Arc<Store>) {
    if let Err(error) = socket.set_nodelay(true) {
        debug!(%peer, %error, "could not set TCP_NODELAY");
    }
    debug!(%peer, "connection opened");
    let (read_half, write_half) = socket.into_split();
    let (responses, queued) = mpsc::channel(QUEUED_RESPONSES);
    let writer = tokio::spawn(write_responses(write_half, queued, peer));

    let mut frames = pin!(kassandra::frame::request_stream(read_half));
    let mut conn = Connection::default();
    while let Some(frame) = frames.next().await {
        match frame {
            Ok((params, opcode, body)) => {
                let response = store.handle_frame(&mut conn, params, opcode, &body);
                if responses.send(response).await.is_err() {
                    break; // the writer stopped: the socket is gone
                }
            }
            Err(error) => {
                // Framing is lost (bad header, compression flag, unknown opcode): close.
                warn!(%peer, %error, "unreadable frame; closing the connection");
                break;
            }
        }
    }
    drop(responses);
    if let Err(error) = writer.await {
        warn!(%peer, %error, "connection writer failed");
    }
    debug!(%peer, "connection closed");
}

async fn write_responses(mut socket: OwnedWriteHalf, mut queued: mpsc::Receiver<BytesMut>, peer: SocketAddr) {
    let mut batch = BytesMut::new();
    while let Some(first) = queued.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_BYTES {
            match queued.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        if let Err(error) = socket.write_all(&batch).await {
            debug!(%peer, %error, "write failed; dropping the connection");
            return;
        }
        batch.clear();
    }
    let _ = socket.shutdown().await;
}
