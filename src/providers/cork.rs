//! A write side that holds an HTTP/2 connection's frames for one turn of the runtime before it sends them.
//!
//! Sends are spawned as tasks, and tokio runs a task woken by another one on the same worker next (its LIFO
//! slot): every send woke the connection task, which wrote that one request's frames in a TLS record and a
//! `writev` of its own. At 30,000 pushes/s that was ~12,000 `writev`s/s (docs/performance.md, session 11).
//! [`Corked`] keeps what the connection writes; the first flush that finds bytes waiting wakes the task again
//! and returns `Pending`, which puts the connection at the back of the worker's queue (tokio re-queues a task
//! that woke itself behind the others), so the sends queued meanwhile join the same write. The second flush
//! writes everything in one go. A flush with nothing held goes straight through, so a lone request waits only
//! for the tasks already queued. The sandbox's TLS listener corks its connections the same way: hyper runs each
//! stream's handler as a task of its own, and each answer woke the connection for a write of its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this many bytes held, a write sends what is held first.
const HOLD_MAX: usize = 64 * 1024;

/// `io` with its writes held until the second flush that finds them (see the module docs).
pub struct Corked<T> {
    io: T,
    held: Vec<u8>,
    /// How much of `held` has been written to `io` (a write can stop short).
    sent: usize,
    /// Whether a flush already let the held bytes wait one turn.
    waited: bool,
}

impl<T> Corked<T> {
    pub fn new(io: T) -> Corked<T> {
        Corked { io, held: Vec::new(), sent: 0, waited: false }
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Writes everything held to `io`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.len() >= HOLD_MAX {
            ready!(self.poll_send(cx))?;
        }
        self.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() >= HOLD_MAX {
            ready!(self.poll_send(cx))?;
        }
        let mut n = 0;
        for slice in slices {
            self.held.extend_from_slice(slice);
            n += slice.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.held.is_empty() {
            if !self.waited {
                self.waited = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_send(cx))?;
            self.waited = false;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_wait_for_the_second_flush_and_then_go_out_together() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut corked = Corked::new(near);
        corked.write_all(b"one ").await.unwrap();
        corked.write_all(b"two").await.unwrap();
        // The first flush that finds bytes held returns Pending (and wakes the task): nothing is sent yet.
        let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut corked).poll_flush(cx))).await;
        assert!(first.is_pending());
        let mut got = [0u8; 16];
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut got)).await;
        assert!(nothing.is_err(), "held until the second flush");
        // What is written before the second flush joins the same send.
        corked.write_all(b" three").await.unwrap();
        corked.flush().await.unwrap();
        let mut all = vec![0u8; 13];
        far.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"one two three");
        // Nothing held: a flush goes straight through.
        let empty = poll_fn(|cx| Poll::Ready(Pin::new(&mut corked).poll_flush(cx))).await;
        assert!(matches!(empty, Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn a_full_hold_is_sent_before_more_is_taken_and_shutdown_sends_the_rest() {
        let (near, mut far) = tokio::io::duplex(4 * HOLD_MAX);
        let mut corked = Corked::new(near);
        corked.write_all(&vec![1u8; HOLD_MAX]).await.unwrap();
        corked.write_all(&[2u8; 10]).await.unwrap();
        let mut first = vec![0u8; HOLD_MAX];
        far.read_exact(&mut first).await.unwrap();
        assert!(first.iter().all(|&b| b == 1), "the full hold went out without a flush");
        corked.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, vec![2u8; 10]);
    }
}
