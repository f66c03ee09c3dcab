//! A memory trace of a streamed run (`omex run --memory-trace`): which weight unit was uploaded into which slot
//! and when, when each unit's compute ran, and GPU bytes and host RSS over time. [`TraceRecorder`] collects it
//! and [`MemoryTrace`] saves and loads it as JSON; the CLI draws it (`omex memory-trace`): a timeline with one
//! lane per upload slot and one for compute, above a memory chart.

#[cfg(not(target_arch = "wasm32"))]
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// The most upload slots a trace may name (`--stream-slots` allows 16).
pub const MAX_SLOTS: usize = 64;

/// Everything recorded during one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryTrace {
    pub model: String,
    /// The adapter, e.g. "NVIDIA H100 (Vulkan)".
    pub device: String,
    /// The GPU memory budget the run planned for, bytes (none: no cap).
    pub budget_bytes: Option<u64>,
    /// Whether uploads overlapped compute (double buffering).
    pub overlap: bool,
    /// Upload slots (buffers streamed units rotate through).
    pub slots: usize,
    pub units: Vec<TraceUnit>,
    pub spans: Vec<TraceSpan>,
    pub memory: Vec<MemorySample>,
}

/// A unit of weights (a weight file, usually a layer): its size, and whether it stays on the GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceUnit {
    pub name: String,
    pub bytes: u64,
    pub resident: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Upload,
    Compute,
}

/// One upload of a unit into a slot, or one unit's compute, in microseconds since the trace began.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSpan {
    pub kind: SpanKind,
    pub unit: String,
    /// The upload slot (compute: the slot it read, if streamed).
    pub slot: Option<usize>,
    /// Which forward pass (token step or prompt chunk) it belongs to.
    pub forward: u64,
    pub start_us: f64,
    pub end_us: f64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    pub t_us: f64,
    /// GPU bytes allocated (the buffer pool's count), and their peak so far.
    pub gpu_bytes: u64,
    pub gpu_peak_bytes: u64,
    /// The process's resident host memory (0 where it cannot be read).
    pub host_rss_bytes: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl MemoryTrace {
    /// Writes the trace as JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_vec(self).map_err(|e| Error::json(path, e))?;
        std::fs::write(path, json).map_err(|e| Error::io(path, e))
    }

    /// Reads a trace [`MemoryTrace::save`] wrote; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<MemoryTrace> {
        let path = path.as_ref();
        let bytes = crate::files::read_regular(path, crate::files::MAX_TEXT_FILE).map_err(|e| Error::io(path, e))?;
        let trace: MemoryTrace = serde_json::from_slice(&bytes).map_err(|e| Error::json(path, e))?;
        trace.check().map_err(|what| Error::invalid(path, what))?;
        Ok(trace)
    }

    /// What drawing the trace relies on: slot numbers within [`MAX_SLOTS`] (each is a lane of the picture)
    /// and finite times.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.slots > MAX_SLOTS {
            return Err(format!("slots {} is above the {MAX_SLOTS} a run can have", self.slots));
        }
        for (i, s) in self.spans.iter().enumerate() {
            if s.slot.is_some_and(|slot| slot >= MAX_SLOTS) {
                return Err(format!("spans[{i}].slot {} is above the {MAX_SLOTS} a run can have", s.slot.unwrap_or(0)));
            }
            if !(s.start_us.is_finite() && s.end_us.is_finite()) {
                return Err(format!("spans[{i}]: start_us and end_us must be finite"));
            }
        }
        if let Some(i) = self.memory.iter().position(|m| !m.t_us.is_finite()) {
            return Err(format!("memory[{i}].t_us must be finite"));
        }
        Ok(())
    }
}

/// Collects a [`MemoryTrace`] while a run goes; times are microseconds since [`TraceRecorder::new`].
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug)]
pub struct TraceRecorder {
    origin: std::time::Instant,
    trace: MemoryTrace,
}

#[cfg(not(target_arch = "wasm32"))]
impl TraceRecorder {
    pub fn new(
        model: impl Into<String>,
        device: impl Into<String>,
        budget_bytes: Option<u64>,
        overlap: bool,
        slots: usize,
        units: Vec<TraceUnit>,
    ) -> TraceRecorder {
        let trace = MemoryTrace {
            model: model.into(),
            device: device.into(),
            budget_bytes,
            overlap,
            slots,
            units,
            spans: Vec::new(),
            memory: Vec::new(),
        };
        TraceRecorder { origin: std::time::Instant::now(), trace }
    }

    /// Microseconds since the recorder was made.
    pub fn now_us(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1e6
    }

    #[allow(clippy::too_many_arguments)]
    pub fn span(
        &mut self,
        kind: SpanKind,
        unit: &str,
        slot: Option<usize>,
        forward: u64,
        start_us: f64,
        end_us: f64,
        bytes: u64,
    ) {
        self.trace.spans.push(TraceSpan { kind, unit: unit.to_string(), slot, forward, start_us, end_us, bytes });
    }

    /// Records GPU memory now, with the host's resident set size.
    pub fn sample(&mut self, gpu_bytes: u64, gpu_peak_bytes: u64) {
        let t_us = self.now_us();
        self.trace.memory.push(MemorySample { t_us, gpu_bytes, gpu_peak_bytes, host_rss_bytes: host_rss_bytes() });
    }

    pub fn finish(self) -> MemoryTrace {
        self.trace
    }
}

/// Resident pages of this process (`/proc/self/statm`) times the page size; 0 where that cannot be read.
#[cfg(not(target_arch = "wasm32"))]
pub fn host_rss_bytes() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * page.max(0) as u64
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, mb: u64, resident: bool) -> TraceUnit {
        TraceUnit { name: name.into(), bytes: mb << 20, resident }
    }

    #[test]
    fn traces_round_trip_through_json_files() {
        let mut r = TraceRecorder::new("m", "d", Some(64 << 20), true, 2, vec![unit("embedding", 40, true)]);
        r.span(SpanKind::Upload, "layer_0", Some(1), 0, 0.0, 80.0, 20 << 20);
        r.span(SpanKind::Compute, "layer_0", Some(1), 0, 80.0, 180.0, 20 << 20);
        r.sample(60 << 20, 62 << 20);
        let mut trace = r.finish();
        trace.memory[0].t_us = 180.0; // a time that prints exactly, so that the JSON compares equal
        let json = serde_json::to_string(&trace).unwrap();
        assert!(json.contains("\"kind\":\"upload\"") && json.contains("\"kind\":\"compute\""));
        assert_eq!(serde_json::from_str::<MemoryTrace>(&json).unwrap(), trace);
        let dir = std::env::temp_dir().join(format!("omex-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.json");
        trace.save(&path).unwrap();
        assert_eq!(MemoryTrace::load(&path).unwrap(), trace);
        std::fs::write(&path, "{\"model\": 3").unwrap();
        let err = MemoryTrace::load(&path).unwrap_err().to_string();
        assert!(err.contains("trace.json"), "{err}");
        let err = MemoryTrace::load(dir.join("missing.json")).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_recorder_stamps_times_and_host_memory() {
        let mut r = TraceRecorder::new("m", "d", None, false, 1, vec![unit("u", 1, false)]);
        let t = r.now_us();
        r.span(SpanKind::Upload, "u", Some(0), 0, t, r.now_us(), 1 << 20);
        r.sample(1 << 20, 2 << 20);
        let trace = r.finish();
        assert_eq!(trace.spans.len(), 1);
        assert!(trace.spans[0].end_us >= trace.spans[0].start_us);
        assert_eq!(trace.memory[0].gpu_peak_bytes, 2 << 20);
        if cfg!(target_os = "linux") {
            assert!(trace.memory[0].host_rss_bytes > 0);
        }
    }
}
