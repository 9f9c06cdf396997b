//! Where readings go once acquired. Until the store exists, a sink writes them out: JSON
//! lines for machines, a table for people.

use std::io::{self, Write};

use tokio::sync::mpsc;

use gridgate_core::reading::Reading;

/// Takes readings in the order they were acquired.
pub trait ReadingSink: Send {
    /// Accepts `readings`; returns once they are handed on (written, flushed).
    fn write(&mut self, readings: &[Reading]) -> io::Result<()>;
}

/// One JSON object per reading per line, flushed after each group.
#[derive(Debug)]
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLinesSink<W> {
    /// A sink on `out`.
    pub fn new(out: W) -> Self {
        JsonLinesSink { out }
    }
}

impl<W: Write + Send> ReadingSink for JsonLinesSink<W> {
    fn write(&mut self, readings: &[Reading]) -> io::Result<()> {
        for r in readings {
            serde_json::to_writer(&mut self.out, r)?;
            self.out.write_all(b"\n")?;
        }
        self.out.flush()
    }
}

/// Human-readable lines: time, point, value and unit, or the quality and error.
#[derive(Debug)]
pub struct TextSink<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> TextSink<W> {
    /// A sink on `out`.
    pub fn new(out: W) -> Self {
        TextSink { out }
    }
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp in ms.
pub fn clock(ts_ms: i64) -> String {
    let ms = ts_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

impl<W: Write + Send> ReadingSink for TextSink<W> {
    fn write(&mut self, readings: &[Reading]) -> io::Result<()> {
        for r in readings {
            match &r.value {
                Some(v) => writeln!(
                    self.out,
                    "{}  {:<32} {:>14} {:<5} {}",
                    clock(r.ts_ms),
                    r.point,
                    v.to_string(),
                    r.unit,
                    r.quality
                )?,
                None => writeln!(
                    self.out,
                    "{}  {:<32} {:>14} {:<5} {} ({})",
                    clock(r.ts_ms),
                    r.point,
                    "-",
                    r.unit,
                    r.quality,
                    r.error.as_deref().unwrap_or("")
                )?,
            }
        }
        self.out.flush()
    }
}

/// Feeds everything from `rx` into `sink` until every sender is gone. Stops early, with the
/// error, if the sink fails (stdout closed, disk gone).
pub async fn drain(
    mut rx: mpsc::Receiver<Vec<Reading>>,
    mut sink: Box<dyn ReadingSink>,
) -> io::Result<()> {
    while let Some(group) = rx.recv().await {
        sink.write(&group)?;
    }
    Ok(())
}
