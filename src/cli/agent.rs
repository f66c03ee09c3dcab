//! `omex agent add MODEL FILE` and `omex agent list MODEL`: a model directory's agents (agents/*.json).

use clap::{Args, Subcommand};
use omex::Result;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Check an agent file and copy it into MODEL/agents/ (an agent of the same id is never replaced)
    Add {
        /// The model directory
        model: PathBuf,
        /// The agent's JSON file
        file: PathBuf,
    },
    /// List the model's agents and their tools
    List {
        /// The model directory
        model: PathBuf,
    },
}

pub fn run(args: AgentArgs) -> Result<()> {
    match args.command {
        AgentCommand::Add { model, file } => {
            let dest = omex::agent::add(&model, &file)?;
            outln!("added {}", dest.display());
        }
        AgentCommand::List { model } => {
            let agents = omex::agent::list(&model)?;
            if agents.is_empty() {
                outln!("{}: no agents (add one with omex agent add)", model.display());
            }
            for (path, a) in agents {
                let tools: Vec<String> = a.tools.iter().map(|t| format!("{} ({})", t.tool_id, t.tool_type)).collect();
                let window = a.window().map_or("context".to_string(), |w| format!("{w} tokens"));
                outln!(
                    "{}\t{}\ttools: {}\twindow: {window}\t{}",
                    a.agent_id,
                    a.agent_type.as_deref().unwrap_or("-"),
                    if tools.is_empty() { "none".to_string() } else { tools.join(", ") },
                    path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
