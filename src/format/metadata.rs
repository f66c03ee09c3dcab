//! `metadata.json`: the seed's metadata schema plus `files`, the size and sha256 of every file of the model.

use serde::{Deserialize, Serialize};

pub const METADATA_FILE: &str = "metadata.json";
pub const OMEX_VERSION: &str = "1.0";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    pub omex_version: String,
    pub model_name: String,
    pub model_version: String,
    pub model_architecture: String,
    /// Human-readable parameter count, e.g. "135M".
    pub parameters: String,
    /// Exact parameter count.
    #[serde(default)]
    pub parameter_count: u64,
    pub creation_date: String,
    pub created_by: String,
    pub license: String,
    pub description: String,
    pub source_format: String,
    pub quantization: QuantSummary,
    pub hardware_targets: Vec<String>,
    pub minimum_requirements: Requirements,
    pub recommended_requirements: Requirements,
    /// Every file of the model directory except metadata.json itself, sorted by path.
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantSummary {
    /// The conversion target: keep (source layouts repacked), f16, int8, int4 or ternary.
    #[serde(rename = "type")]
    pub kind: String,
    /// How values were produced, e.g. "lossless repack of Q4_1/Q8_0", "absmax", "min-max", "absmean".
    pub method: String,
    pub symmetric: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Requirements {
    pub ram: String,
    pub compute: String,
    pub storage: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the model directory, with `/` separators.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// "1.5 GB", "98 MB", "740 KB": decimal units, as the seed's examples write them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)];
    for (unit, size) in UNITS {
        if bytes as f64 >= size {
            let v = bytes as f64 / size;
            return if v >= 10.0 { format!("{v:.0} {unit}") } else { format!("{v:.1} {unit}") };
        }
    }
    format!("{bytes} B")
}

/// "135M", "1.1B": parameter counts as model names write them.
pub fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{}M", (n as f64 / 1e6).round())
    } else {
        format!("{}K", (n as f64 / 1e3).round())
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), the form of `creation_date`.
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(98_362_432), "98 MB");
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_params(134_515_008), "135M");
        assert_eq!(human_params(1_100_048_384), "1.1B");
    }
}
