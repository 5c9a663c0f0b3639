//! The worker protocol: length-prefixed postcard frames over the worker's stdin and stdout.
//!
//! A worker first writes [`MAGIC`] then a [`Response::Ready`] frame. The parent then sends one
//! [`Request::Run`] at a time to an idle worker, which answers with one [`Response::Done`].
//! Closing the worker's stdin (or [`Request::Shutdown`]) ends it. Frames are a little-endian
//! `u32` length followed by that many bytes of postcard. Task payloads inside are encoded with
//! the task's own [`Codec`](crate::Codec).

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::task::TaskError;

/// First bytes a worker writes: identifies the protocol and its version.
pub(crate) const MAGIC: [u8; 8] = *b"CAIMANW\x01";

/// The largest frame accepted (1 GiB): bulk data never goes through the pipes.
const MAX_FRAME: usize = 1 << 30;

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Run one task.
    Run {
        /// Index of the task in the map.
        index: u64,
        /// Worker index (for [`TaskCtx::worker`](crate::TaskCtx::worker)).
        worker: u32,
        /// [`Task::NAME`](crate::Task::NAME).
        task: String,
        /// Inner threads the task may use.
        inner: u32,
        /// The task, encoded with its codec.
        payload: Vec<u8>,
    },
    /// Exit now.
    Shutdown,
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// Sent once, right after [`MAGIC`].
    Ready {
        /// The worker's process id.
        pid: u32,
        /// Task types it can run.
        tasks: Vec<String>,
        /// Its peak RSS so far, KiB.
        peak_rss_kib: u64,
    },
    /// The outcome of one [`Request::Run`].
    Done {
        /// Index of the task in the map.
        index: u64,
        /// What happened.
        outcome: Outcome,
        /// Wall time of the task, ns.
        wall_ns: u64,
        /// CPU time of the worker process during the task, ns.
        cpu_ns: u64,
        /// The worker's peak RSS so far, KiB.
        peak_rss_kib: u64,
    },
}

/// How a task ended inside a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded output.
    Ok(Vec<u8>),
    /// The task returned an error.
    Failed(TaskError),
    /// The task panicked; the message.
    Panicked(String),
    /// The worker has no task type of that name.
    Unknown(String),
    /// The task could not be decoded, or its output encoded.
    Codec(String),
}

/// Writes one frame (not flushed).
pub(crate) fn write_frame<M: Serialize>(w: &mut impl Write, message: &M) -> io::Result<()> {
    let bytes = postcard::to_stdvec(message).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::other(format!("frame of {} bytes is too large", bytes.len())))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)
}

/// Reads one frame; `Ok(None)` on end of stream at a frame boundary.
pub(crate) fn read_frame<M: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => r.read_exact(&mut len[1..])?,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return read_frame(r),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    postcard::from_bytes(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        let payload = vec![7u8; 100_000];
        write_frame(&mut buf, &Request::Run { index: 3, worker: 1, task: "t".into(), inner: 2, payload }).unwrap();
        write_frame(&mut buf, &Request::Shutdown).unwrap();
        let mut r = &buf[..];
        match read_frame::<Request>(&mut r).unwrap() {
            Some(Request::Run { index: 3, worker: 1, inner: 2, payload, .. }) => {
                assert_eq!(payload.len(), 100_000)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_frame::<Request>(&mut r).unwrap(), Some(Request::Shutdown)));
        assert!(read_frame::<Request>(&mut r).unwrap().is_none());
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Shutdown).unwrap();
        buf.extend_from_slice(&[5, 0]);
        let mut r = &buf[..];
        read_frame::<Request>(&mut r).unwrap();
        assert!(read_frame::<Request>(&mut r).is_err());
        let huge = u32::MAX.to_le_bytes();
        assert!(read_frame::<Request>(&mut &huge[..]).is_err());
    }
}
