//! The file sink: JSON lines appended to a file, fsynced before a batch counts as delivered,
//! rotated by size and age (the old file is renamed `<path>.<UTC time>`).
//!
//! Background path (a delivery loop). Blocking file I/O runs on the blocking pool.

use super::{Lines, Sink};
use async_trait::async_trait;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A rotated JSON-lines file.
pub struct FileSink {
    inner: Arc<Mutex<State>>,
}

struct State {
    path: PathBuf,
    rotate_bytes: u64,
    rotate_interval: Duration,
    file: Option<(File, u64, Instant)>,
}

impl FileSink {
    /// A sink appending to `path`.
    pub fn new(path: &Path, rotate_bytes: u64, rotate_interval: Duration) -> FileSink {
        FileSink {
            inner: Arc::new(Mutex::new(State { path: path.to_path_buf(), rotate_bytes, rotate_interval, file: None })),
        }
    }
}

impl State {
    fn write(&mut self, lines: &Lines) -> std::io::Result<()> {
        if let Some((_, size, opened)) = &self.file {
            if *size >= self.rotate_bytes || opened.elapsed() >= self.rotate_interval {
                self.rotate()?;
            }
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let size = f.metadata()?.len();
            self.file = Some((f, size, Instant::now()));
        }
        // The batch already is JSON lines, in one buffer: written as it is.
        let buf = lines.as_json_lines();
        let Some((f, size, _)) = self.file.as_mut() else { return Ok(()) };
        let before = *size;
        if let Err(e) = f.write_all(buf).and_then(|()| f.sync_data()) {
            // Never leave half a batch: the whole batch is delivered again.
            let _ = f.set_len(before);
            return Err(e);
        }
        *size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let stamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string().replace(':', "-");
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(format!(".{stamp}"));
        std::fs::rename(&self.path, &rotated)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&self, lines: Lines) -> Result<(), String> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || crate::sync::lock(&inner).write(&lines))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// Every file a file sink at `path` wrote: rotated ones first (oldest first), then `path`.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{name}.")) && n.len() > name.len() + 1)
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    rotated.push(path.to_path_buf());
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_by_size_and_keeps_every_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("u.jsonl");
        let sink = FileSink::new(&path, 4096, Duration::from_secs(3600));
        for i in 0..50 {
            let line = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes();
            sink.deliver([line].into_iter().collect()).await.unwrap();
        }
        let all = files(&path);
        assert!(all.len() >= 2, "{all:?}");
        let lines: Vec<String> = all
            .iter()
            .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>())
            .collect();
        assert_eq!(lines.len(), 50);
        for (i, l) in lines.iter().enumerate() {
            assert!(l.starts_with(&format!("{{\"n\":{i},")), "line {i} is {l}");
        }
    }
}
