//! The `omex` command line. Each subcommand lives in `src/cli/<name>.rs`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(name = "omex", version, about = "A GPU-first model format and runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file or a Hugging Face model directory to an omex model directory
    Convert(cli::convert::ConvertArgs),
    /// LoRA adapters of a model: add (import PEFT), list, remove
    Adapter(cli::adapter::AdapterArgs),
    /// Check a model directory: schemas, records, checksums, tokenizer
    Validate(cli::validate::ValidateArgs),
    /// List each weight file's tensors with their layouts and sizes
    LayerInspect(cli::layer_inspect::LayerInspectArgs),
    /// Encode text to token ids, or decode ids to text
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Generate text from a prompt
    Run(cli::run::RunArgs),
    /// Chat with the model on the terminal (multi-turn, optionally as one of its agents)
    Chat(cli::chat::ChatArgs),
    /// Add or list a model's agents (agents/*.json)
    Agent(cli::agent::AgentArgs),
    /// Compare two models on a text: logit differences, top-1 agreement, perplexity and speed
    Compare(cli::compare::CompareArgs),
    /// Write a per-op timeline of a prompt and a few decode steps (Chrome trace-event JSON, for Perfetto)
    Trace(cli::trace::TraceArgs),
    /// Run an execution container (a task graph of model-inference and tool nodes), resuming a past run
    Exec(cli::exec::ExecArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (continuous batching)
    Serve(cli::serve::ServeArgs),
    /// Measure prompt processing and generation speed
    Bench(cli::bench::BenchArgs),
    /// Perplexity of a text file (llama-perplexity's definition)
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Plan GPU memory under a budget: resident and streamed layers, bytes moved, predicted speed
    Plan(cli::plan::PlanArgs),
    /// Measure this machine's GPU and upload bandwidths, cached for `omex plan`
    Profile(cli::profile::ProfileArgs),
    /// Time the GPU kernel variants on the model's ops and keep the fastest per op (optimization/ profile)
    Optimize(cli::optimize::OptimizeArgs),
    /// Draw a memory trace recorded with `omex run --memory-trace` as an SVG
    MemoryTrace(cli::memory_trace::MemoryTraceArgs),
    /// Draw a model's op program as an SVG: blocks, one expanded op by op, bytes and kernels
    GraphVisualize(cli::graph_visualize::GraphVisualizeArgs),
}

fn main() -> ExitCode {
    // Like any Unix tool, end quietly when the reader of our output goes away (`omex layer-inspect | head`)
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp(None).init();
    let cli = Cli::parse();
    let result: omex::Result<()> = match cli.command {
        Command::Convert(args) => cli::convert::run(args),
        Command::Adapter(args) => cli::adapter::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::LayerInspect(args) => cli::layer_inspect::run(args),
        Command::Tokenize(args) => cli::tokenize::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Chat(args) => cli::chat::run(args),
        Command::Agent(args) => cli::agent::run(args),
        Command::Exec(args) => cli::exec::run(args),
        Command::Compare(args) => cli::compare::run(args),
        Command::Trace(args) => cli::trace::run(args),
        Command::Optimize(args) => cli::optimize::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Perplexity(args) => cli::perplexity::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Profile(args) => cli::profile::run(args),
        Command::MemoryTrace(args) => cli::memory_trace::run(args),
        Command::GraphVisualize(args) => cli::graph_visualize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
