//! `clusterctl`: see `clusterd::ctl`.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = clusterd::ctl::Cli::parse();
    let mut stdout = std::io::stdout();
    if let Err(failure) = clusterd::ctl::run(cli, &mut stdout).await {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("clusterctl: {}", failure.message);
        }
        std::process::exit(failure.code);
    }
}
