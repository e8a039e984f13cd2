//! The Ethernet hub of the QEMU cluster: `coracle-hub --dir DIR --boards N
//! [--seed S]`, controlled by lines on standard input (`cut N`, `heal N`,
//! `heal`, `drop PERCENT`, `stats`, `quit`). See `coracle_embedded::hub`.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut dir = None;
    let mut boards = None;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--dir", Some(v)) => dir = Some(PathBuf::from(v)),
            ("--boards", Some(v)) => boards = v.parse::<usize>().ok(),
            ("--seed", Some(v)) => seed = v.parse().unwrap_or(1),
            _ => {
                eprintln!("usage: coracle-hub --dir DIR --boards N [--seed S]");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(dir), Some(boards)) = (dir, boards) else {
        eprintln!("usage: coracle-hub --dir DIR --boards N [--seed S]");
        return ExitCode::from(2);
    };
    let stdin = io::stdin().lock();
    match coracle_embedded::hub::run(&dir, boards, seed, stdin, io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coracle-hub: {e}");
            ExitCode::FAILURE
        }
    }
}
