//! `omex profile [--json] [--cached]`: this machine's adapters, host memory and GPU bandwidths, measured and
//! cached in `$OMEX_HOME/profile.json` (default `~/.omex/`) for `omex plan`; `--cached` shows the cached profile
//! without measuring.

use clap::Args;
use omex::backend::gpu::profile::{self, MachineProfile, MATVEC_DIM, TRANSFER_BYTES, UPLOAD_CHUNK};
use omex::format::metadata::human_bytes;
use omex::{Error, Result};

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Print the profile as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// Show the cached profile (if any) instead of measuring
    #[arg(long)]
    pub cached: bool,
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let cached = if args.cached { profile::load_cached()? } else { None };
    let (p, fresh) = match cached {
        Some(p) => (p, false),
        None => {
            if !args.json {
                eprintln!("measuring this machine (a few seconds; a software adapter takes longer)...");
            }
            (profile::measure_blocking()?, true)
        }
    };
    let path = if fresh { Some(profile::save(&p)?) } else { profile::cache_path() };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&p).map_err(|e| Error::Usage(e.to_string()))?);
        return Ok(());
    }
    out!("{}", table(&p));
    if let Some(path) = path {
        let how = if fresh { "saved to" } else { "cached in" };
        outln!(
            "{how} {}{}",
            path.display(),
            if fresh { "" } else { " (without --cached, omex profile measures again)" }
        );
    }
    Ok(())
}

fn table(p: &MachineProfile) -> String {
    let mut s = format!("omex {}, measured {}\n", p.omex_version, utc(p.measured_at));
    let mem = |b: Option<u64>| b.map_or("unknown".to_string(), human_bytes);
    s += &format!("host memory  {} ({} available)\n", mem(p.host_memory_bytes), mem(p.host_available_bytes));
    if p.adapters.is_empty() {
        s += "adapters     none\n";
    }
    for (i, a) in p.adapters.iter().enumerate() {
        let preferred = p.gpu.as_ref().is_some_and(|g| g.adapter == a.name);
        s += &format!(
            "{} {}{} ({}, {}; driver {} {}; largest buffer {})\n",
            if i == 0 { "adapters    " } else { "            " },
            if preferred { "* " } else { "  " },
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.driver_info,
            human_bytes(a.max_buffer_bytes)
        );
    }
    match &p.gpu {
        Some(g) => {
            let kernels = p.gpu_kernels.as_deref().unwrap_or("?");
            s += &format!("GPU          {} (kernels: {kernels})\n", g.adapter);
            let mib = TRANSFER_BYTES >> 20;
            let rows = [
                (
                    "device copy",
                    format!("{:.2} GB/s", g.copy_gbs),
                    format!("{mib} MiB buffer to buffer, bytes copied counted once"),
                ),
                (
                    "upload",
                    format!("{:.2} GB/s", g.upload_gbs),
                    format!("write_buffer, {} MiB pieces, host copy included", UPLOAD_CHUNK >> 20),
                ),
                (
                    "staging upload",
                    format!("{:.2} GB/s", g.staging_upload_gbs),
                    "mapped staging buffer + copy".to_string(),
                ),
                (
                    "int4 matvec",
                    format!("{:.2} GB/s", g.matvec_gbs),
                    format!("{MATVEC_DIM}x{MATVEC_DIM}, weight bytes read"),
                ),
                ("dispatch", format!("{:.1} us", g.dispatch_us), "one small dependent dispatch".to_string()),
            ];
            for (name, value, what) in rows {
                s += &format!("  {name:<16}{value:>12}   {what}\n");
            }
        }
        None => s += &format!("GPU          not measured: {}\n", p.gpu_error.as_deref().unwrap_or("no adapter")),
    }
    s
}

/// "2026-11-22 14:03 UTC" from seconds since the Unix epoch.
fn utc(secs: u64) -> String {
    let t = omex::format::metadata::rfc3339(secs); // YYYY-MM-DDTHH:MM:SSZ
    format!("{} {} UTC", &t[..10], &t[11..16])
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(951_782_400 + 3600 + 120), "2000-02-29 01:02 UTC");
        assert_eq!(super::utc(1_764_547_200), "2025-12-01 00:00 UTC");
    }
}
