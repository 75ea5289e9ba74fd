//! `hais-agent`: see `hais-agent --help`.

fn main() {
    std::process::exit(hais_agent::cli::main());
}
