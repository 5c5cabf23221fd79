//! Counts the words of the files named on the command line, on a pool of worker processes.
//!
//! `cargo run -p newcomer -- FILE...`: prints `FILE: N words` for each file, and ends with
//! `Error: ...` and exit code 1 at the first file that could not be read.

use std::path::PathBuf;

use smol_offload::ProcessPool;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol_offload::init(); // first thing in main, before any thread starts
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let pool = ProcessPool::new(2)?;
    let counts = smol::block_on(newcomer::count_all(&pool, paths.clone()))?;
    for (path, count) in paths.iter().zip(counts) {
        println!("{}: {} words", path.display(), count?);
    }
    Ok(())
}
