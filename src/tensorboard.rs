//! TensorBoard event files: scalars a run writes beside its metrics.jsonl.
//!
//! An event file is a TFRecord stream (length, masked CRC32C of the length, data, masked CRC32C
//! of the data) of `Event` protobufs; the first event names the format version, the others carry
//! one `Summary` scalar each. The messages below are the few fields of TensorFlow's
//! `event.proto`/`summary.proto` that scalars need, with their field numbers, encoded by prost.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    /// A member of the `value` oneof in TensorFlow's definition; the wire format is the same.
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    /// 1 is START: readers drop what an earlier writer logged at this step or later.
    #[prost(int32, tag = "1")]
    status: i32,
}

const SESSION_START: i32 = 1;

/// The CRC TFRecord stores: CRC32C rotated and offset, so that CRCs of data holding CRCs stay
/// well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Writes one TensorBoard event file.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, named as TensorFlow names them
    /// (`events.out.tfevents.<seconds>.<host>`, then the microseconds, and a number when a
    /// file of that name exists).
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".to_string());
        // Readers take a run's files in name order, which must be the order they were written
        // in (a restart marker only discards what was read before it): the microseconds go last.
        let base = format!("events.out.tfevents.{:010}.{host}.{:06}", now.as_secs(), now.subsec_micros());
        let mut path = dir.join(&base);
        let mut n = 1;
        let file = loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    path = dir.join(format!("{base}.{n}"));
                    n += 1;
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        let mut writer = EventWriter { file: BufWriter::new(file), path };
        writer.write_event(&Event {
            wall_time: wall_time(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar (TensorBoard stores it as a 32-bit float).
    pub fn add_scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        let summary =
            Summary { value: vec![SummaryValue { tag: tag.to_string(), simple_value: Some(value as f32) }] };
        self.write_event(&Event { wall_time: wall_time(), step, what: Some(What::Summary(summary)) })
    }

    /// Marks a restart at `step`: TensorBoard discards what earlier files of the run logged at
    /// `step` or later (work redone after resuming from a checkpoint).
    pub fn add_session_start(&mut self, step: i64) -> Result<()> {
        let log = SessionLog { status: SESSION_START };
        self.write_event(&Event { wall_time: wall_time(), step, what: Some(What::SessionLog(log)) })
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file.write_all(&record).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.file.flush();
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Writes the numbers of a metrics line into the event file kept in `slot`, creating it in
/// `dir` at the first line this process writes. A new file starts with a restart marker at
/// that step, so readers drop what an interrupted process logged for work that is redone.
pub fn log_line(
    slot: &mut Option<EventWriter>,
    dir: &Path,
    prefix: &str,
    step: i64,
    line: &serde_json::Value,
    skip: &[&str],
) -> Result<()> {
    let writer = match slot {
        Some(w) => w,
        None => {
            let mut w = EventWriter::create(dir)?;
            w.add_session_start(step)?;
            slot.insert(w)
        }
    };
    add_json_scalars(writer, prefix, step, line, skip)?;
    writer.flush()
}

/// Every number of a metrics line as a scalar `prefix/key`; other fields (strings, lists,
/// nulls) and the keys in `skip` are left out.
pub fn add_json_scalars(
    writer: &mut EventWriter,
    prefix: &str,
    step: i64,
    line: &serde_json::Value,
    skip: &[&str],
) -> Result<()> {
    if let Some(obj) = line.as_object() {
        for (key, value) in obj {
            if skip.contains(&key.as_str()) {
                continue;
            }
            if let Some(v) = value.as_f64() {
                writer.add_scalar(&format!("{prefix}/{key}"), step, v)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_of_known_data() {
        // CRC32C("123456789") is 0xe3069283 (the standard check value); masked by hand:
        // rotated right by 15 bits, plus 0xa282ead8, modulo 2^32.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn records_are_framed_and_decodable() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path().join("tb")).unwrap();
        w.add_scalar("a/b", 3, 0.5).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes: [u8; 8] = bytes[at..at + 8].try_into().unwrap();
            let len = u64::from_le_bytes(len_bytes) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(&len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc(data));
            events.push(Event::decode(data).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())));
        assert_eq!(events[1].step, 3);
        match &events[1].what {
            Some(What::Summary(s)) => {
                assert_eq!(s.value[0].tag, "a/b");
                assert_eq!(s.value[0].simple_value, Some(0.5));
            }
            other => panic!("not a summary: {other:?}"),
        }
    }
}
