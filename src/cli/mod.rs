//! One file per subcommand: parse the flags, call the library, print. No model logic lives here.

/// `print!` to stdout that returns a failed write (a full disk, `> /dev/full`) as an error naming stdout,
/// instead of panicking as `print!` does. Only in functions returning `omex::Result`.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*))? };
}

/// `println!` as [`out!`] does it.
macro_rules! outln {
    () => { $crate::cli::write_out(format_args!("\n"))? };
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))? };
}

pub fn write_out(args: std::fmt::Arguments) -> omex::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).map_err(|e| omex::Error::io("stdout", e))
}

/// `n` and the noun, plural unless `n` is 1: "1 token", "2 tokens".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A progress bar on stderr, or `None` when stderr is not a terminal (logs and pipes stay clean). `len` 0 is
/// a spinner.
pub fn progress(len: u64, msg: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (bar, template) = if len == 0 {
        (indicatif::ProgressBar::new_spinner(), "{spinner} [{elapsed_precise}] {msg}")
    } else {
        (indicatif::ProgressBar::new(len), "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

pub mod adapter;
pub mod agent;
pub mod bench;
pub mod chat;
pub mod compare;
pub mod convert;
pub mod engine_args;
pub mod exec;
pub mod graph_visualize;
pub mod layer_inspect;
pub mod memory_trace;
pub mod optimize;
pub mod perplexity;
pub mod plan;
pub mod profile;
pub mod run;
pub mod serve;
pub mod tokenize;
pub mod trace;
pub mod validate;
