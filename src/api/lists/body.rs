//! A response body sent from shared chunks: every reader of a list gets the same
//! refcounted chunks, and hyper writes them to the socket as they are (vectored
//! writes), so a 6 MB list is never copied per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The chunks of one answer, in order.
pub struct Chunks {
    frames: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl Chunks {
    /// A body of `frames` (empty ones are skipped: a frame of none means nothing).
    pub fn new(frames: Vec<Bytes>) -> Self {
        let frames: Vec<Bytes> = frames.into_iter().filter(|f| !f.is_empty()).collect();
        let remaining = frames.iter().map(|f| f.len() as u64).sum();
        Self {
            frames: frames.into_iter(),
            remaining,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.frames.next();
        if let Some(f) = &next {
            self.remaining -= f.len() as u64;
        }
        Poll::Ready(next.map(|f| Ok(Frame::data(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    /// Exact: hyper sends a `Content-Length`, not chunked encoding.
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_chunks_are_sent_in_order_with_their_exact_length() {
        let body = Chunks::new(vec![
            Bytes::from_static(b"["),
            Bytes::new(),
            Bytes::from_static(b"1,2"),
            Bytes::from_static(b"]"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(5));
        let all = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&all[..], b"[1,2]");
    }
}
