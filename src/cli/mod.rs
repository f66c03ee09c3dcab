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

pub mod bench;
pub mod convert;
pub mod engine_args;
pub mod layer_inspect;
pub mod memory_trace;
pub mod perplexity;
pub mod plan;
pub mod profile;
pub mod run;
pub mod tokenize;
pub mod validate;
