//! `tidewire genconfig`: the embedded defaults as a commented configuration file.

use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct GenconfigArgs {
    /// Write the file here instead of standard output. An existing file is kept unless
    /// --force is given.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Overwrite --output if it exists.
    #[arg(long, requires = "output")]
    force: bool,
}

pub fn run(args: GenconfigArgs) -> Result<()> {
    let text = tidewire_hub::DEFAULT_FILE;
    match &args.output {
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write to standard output"),
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true);
            if args.force {
                options.create(true).truncate(true);
            } else {
                options.create_new(true);
            }
            let mut file = options.open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::anyhow!(
                        "--output: {} exists already (--force overwrites it)",
                        path.display()
                    )
                } else {
                    anyhow::anyhow!("--output: cannot create {}: {e}", path.display())
                }
            })?;
            file.write_all(text.as_bytes())
                .with_context(|| format!("--output: cannot write {}", path.display()))?;
            eprintln!(
                "wrote {}: check it with `tidewire serve --config {} --check-config`",
                path.display(),
                path.display()
            );
            Ok(())
        }
    }
}
